"""Names for the JSON the simulator reads and writes (types only; standard library).

    Message       one chat message of a request as parsed; each field is checked where it is read
    Messages      a request's messages
    JSONObject    a JSON object the simulator builds and sends (a completion, a batch, an error body)
    RuleOptions   a fault rule's, script's or batch fault's options as given (a TOML table, a parsed
                  ``--fault`` spec): values of any type, which the dataclass's ``__post_init__`` checks
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

Message: TypeAlias = Mapping[str, object]
Messages: TypeAlias = Sequence[Message]
JSONObject: TypeAlias = dict[str, object]
# Any, not object: the values go through `cls(**options)` to fields that __post_init__ validates.
RuleOptions: TypeAlias = Mapping[str, Any]
