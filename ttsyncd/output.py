"""What a command prints and its exit code, as the CLI shows it and a daemon sends it back
through its control socket. Imports nothing heavy: the CLI shows a daemon's answer with it."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from ttsyncd.errors import EXIT_OK


@dataclass
class Output:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    code: int = EXIT_OK

    def show(self) -> int:
        for line in self.stdout:
            print(line)
        for line in self.stderr:
            print(line, file=sys.stderr)
        return self.code

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Output:
        return Output(list(data["stdout"]), list(data["stderr"]), int(data["code"]))
