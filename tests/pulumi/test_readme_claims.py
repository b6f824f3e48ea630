"""What the README says ``pulumi preview`` shows for the shipped dev stack, checked under the
mocks: the number of containers and their names (the README's Docker walk-through)."""

from __future__ import annotations

import re

import yaml

from harness import REPO_ROOT, run_program

CONTAINER = "docker:index/container:Container"


def test_readme_container_count_matches_the_dev_stack() -> None:
    stack = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    config = {k.split(":", 1)[1]: v for k, v in stack.items() if k.startswith("cvmfs-ephemeral:")}
    program = run_program(config, secret=set())
    names = sorted(r.name for r in program.of_type(CONTAINER))
    readme = (REPO_ROOT / "README.md").read_text()
    claimed = re.search(r"pulumi preview +# the image tag \(content hash\) and (\d+) containers",
                        readme)
    assert claimed, "README no longer states the container count of pulumi preview"
    assert int(claimed.group(1)) == len(names), names
    prefix = config["name"]
    services = [n for n in names if not n.endswith("-files")]
    assert services == sorted(f"{prefix}-{role}" for role in
                              ("stratum0", "upload", "gateway", "maintenance"))
    assert f"The {len(names)} containers are the {len(services)} services" in readme
    assert f"{len(names) - len(services)} short-lived `<name>-<role>-files` containers" in readme
