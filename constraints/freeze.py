"""Print the installed versions of everything `modeling-merge[dev]` pulls in, as a pip constraints file.

Run it in the environment the test suite just passed in; see constraints/README.md.
"""

import re
from importlib import metadata

from packaging.requirements import Requirement

ROOT, ROOT_EXTRAS = "modeling-merge", ("dev",)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: installed version} of `root`'s requirements (with `extras`), transitively."""
    pinned: dict[str, str] = {}
    pending = [(root, extras)]
    seen: set[tuple[str, str]] = set()
    while pending:
        name, wanted = pending.pop()
        for extra in wanted or ("",):
            if (canonical(name), extra) in seen:
                continue
            seen.add((canonical(name), extra))
            distribution = metadata.distribution(name)
            for text in distribution.requires or []:
                requirement = Requirement(text)
                if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                    continue
                # no local label ("+cpu"): `==2.13.0` admits the local CPU wheel and the same release elsewhere
                pinned[canonical(requirement.name)] = metadata.version(requirement.name).split("+")[0]
                pending.append((requirement.name, tuple(requirement.extras)))
    pinned.pop(canonical(root), None)
    return pinned


if __name__ == "__main__":
    print("# Versions the test suite last passed with; regenerate with: python constraints/freeze.py > constraints/tested.txt")
    for name, version in sorted(closure(ROOT, ROOT_EXTRAS).items()):
        print(f"{name}=={version}")
