"""The on-disk caches' content keys: the same settings give the same key in every
process; other settings, another key."""

import subprocess
import sys
from dataclasses import dataclass, field

from peftlab.fsutil import content_key


@dataclass
class Settings:
    name: str = "lora"
    targets: set = field(default_factory=lambda: {"q_proj", "v_proj", "k_proj"})


def test_a_content_key_does_not_depend_on_set_order_or_on_the_process():
    parts = {"targets": {"q_proj", "v_proj", "k_proj", "o_proj"}, "config": Settings()}
    same = {"config": Settings(), "targets": {"o_proj", "k_proj", "v_proj", "q_proj"}}
    assert content_key(parts) == content_key(same)
    # Another process hashes strings with another seed: set order differs there, in a
    # dataclass's field too.
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_fsutil import Settings;"
        "from peftlab.fsutil import content_key;"
        "print(content_key({'targets': {'q_proj', 'v_proj', 'k_proj', 'o_proj'},"
        " 'config': Settings()}))"
    )
    for seed in ("1", "2"):
        env = {"PYTHONHASHSEED": seed}
        other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert other.stdout.decode().strip() == content_key(parts)


def test_a_content_key_changes_with_what_it_depends_on():
    base = content_key({"config": Settings(), "precision": "fp32"})
    assert len(base) == 16 and len(content_key({}, length=24)) == 24
    assert content_key({"config": Settings(), "precision": "bf16"}) != base
    assert content_key({"config": Settings(name="ia3"), "precision": "fp32"}) != base
