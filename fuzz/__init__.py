"""Coverage-guided fuzzing of every parser of untrusted input.

Design note
-----------
Each target in `fuzz.targets` is a plain function `target(data: bytes) -> None` that feeds the bytes
to one parser, lets the parser's *documented* error (ProtocolError, ProjectionError, the emulator's
ApiError) pass silently, and raises on anything else: an unexpected exception type, or a broken
invariant checked right there (splitting a stream changes what is decoded, a decoded message does not
survive re-encoding, a patch mutates its input...). A raise is a crash, which is what the fuzzer hunts.

The targets are plain functions on purpose, so three things can drive them:
- atheris (libFuzzer's coverage-guided mutation for Python), for real fuzzing: `python -m fuzz run
  TARGET` / `make fuzz`. Only our own packages are instrumented, so coverage feedback is about our
  code, not msgpack's or orjson's;
- pytest, which replays every file of the seed corpus (`fuzz/corpus/<target>/`) on every run, so a
  crash once found and fixed stays fixed (its input is added to the corpus as `regress-*`);
- a hypothesis-driven fallback with the same targets and seeds where atheris cannot be installed
  (it ships wheels for CPython on x86-64 Linux and macOS; elsewhere it needs a matching clang).

Seeds are small valid inputs built from the real encoders and fixtures (`python -m fuzz.seeds`), so
mutation starts past the handshake and the JSON envelope instead of spending its budget finding them.
New inputs the fuzzer finds go to `.fuzz/<target>/` (not committed); crash inputs to `.fuzz/crashes/`.

This package is a tool, not part of the product: it may import every package of ours.
"""
