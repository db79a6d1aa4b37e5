"""Generated task ids: short, URL-safe, distinct, and distinct across a fork."""

from __future__ import annotations

import os
import re

from aqueue._options import new_task_id


def test_generated_ids_are_16_url_safe_characters_and_distinct() -> None:
    ids = [new_task_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    new_task_id()  # the buffer now holds the parent's next ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read)
        os.write(write, ",".join(new_task_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_task_id() for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
