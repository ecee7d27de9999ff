"""What the built layer holds: its compiled files by CPU (ELF ``e_machine``) and its wheels' tags.

The functions run on arm64 (Graviton) while ``sam build`` runs here on x86_64: the layer's
compiled files must all be aarch64, and this machine cannot load them.
"""

from __future__ import annotations

import platform
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
EM_AARCH64 = 183
MACHINE_NAMES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}
# platform.machine() -> ELF e_machine of this interpreter's own extension modules.
_HOST_MACHINES = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}


def elf_machine(path: Path) -> int | None:
    """The ELF header's ``e_machine`` (offset 18, 2 bytes, in the file's byte order); None if not ELF."""
    with path.open("rb") as f:
        header = f.read(20)
    if len(header) < 20 or not header.startswith(ELF_MAGIC):
        return None
    byteorder = "little" if header[5] == 1 else "big"  # EI_DATA: 1 = ELFDATA2LSB
    return int.from_bytes(header[18:20], byteorder)


def host_machine() -> int:
    return _HOST_MACHINES[platform.machine().lower()]


def compiled_files(root: Path) -> dict[Path, int]:
    """Every ELF file under ``root`` (whatever its name: ``.so``, ``.so.1``, a bundled binary)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and (machine := elf_machine(path)) is not None:
            found[path] = machine
    return found


def foreign_files(root: Path, machine: int) -> list[str]:
    """Compiled files under ``root`` built for another CPU than ``machine``, as ``path: cpu``."""
    return [
        f"{path.relative_to(root)}: {MACHINE_NAMES.get(found, f'e_machine {found}')}"
        for path, found in compiled_files(root).items()
        if found != machine
    ]


def wheel_tags(dist_info: Path) -> tuple[bool, list[str]]:
    """``(Root-Is-Purelib, [Tag, ...])`` from a ``*.dist-info/WHEEL`` file."""
    purelib, tags = False, []
    for line in (dist_info / "WHEEL").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Root-Is-Purelib":
            purelib = value.strip().lower() == "true"
        elif key.strip() == "Tag":
            tags.append(value.strip())
    return purelib, tags


def top_level_packages(dist_info: Path) -> set[str]:
    """The top-level names a distribution installs, from its RECORD."""
    names = set()
    for line in (dist_info / "RECORD").read_text().splitlines():
        first = line.split(",", 1)[0].split("/", 1)[0]
        if first and not first.endswith((".dist-info", ".data")) and first != "..":
            names.add(first.removesuffix(".py"))
    return names
