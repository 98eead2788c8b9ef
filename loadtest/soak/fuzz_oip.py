"""The OIP decoder's property test, for longer: ``python -m loadtest.soak.fuzz_oip [N]``
runs N examples (default 20,000; ``make test`` runs 300) of random JSON and binary
bodies with lying headers, huge and negative shapes, NaN/Inf and nested data, and
fails on anything but a client error (400/413/422) or a decode slower than 0.5 s."""

from __future__ import annotations

import sys

from hypothesis import HealthCheck, given, settings

from tests.unit.protocol.test_oip_fuzz import bodies, decode_is_client_error


def main() -> None:
    """Run the property with the requested number of examples."""
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    check = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))(
        given(bodies())(decode_is_client_error)
    )
    check()
    print(f"{examples} examples: only client errors, each under 0.5 s")


if __name__ == "__main__":
    main()
