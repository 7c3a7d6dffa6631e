"""The README's first two commands, and the slow-tier command below them, are what CI runs."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    install, test = first_block[0], first_block[1]
    assert install.startswith("pip install torch==2.13.0")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    slow = blocks[1].strip()
    assert slow == f"{test} -m slow"  # the integration tier, right below the first block
    assert slow in ci and ci.index(test) < ci.index(slow)
