"""Fault tests: crashes, concurrent writers, failing disks, hand edits, fuzzing, bad input,
misbehaving upstreams, secrets and host binding. They try to break the durability and security
guarantees (the README's "Guarantees" section lists each one with its test)."""
