//! End-to-end tests of the stream proxy live in `tests/tests/`; this library is empty.
