"""Run mnistlab CLI commands one after another in this process; write each one's exit code and stderr.

Usage: python run_commands.py COMMANDS.json RESULTS.json, where COMMANDS.json is a list of argv
lists. An exception escaping main() is recorded as exit "escaped" with its traceback, so the test
sees it exactly as a user would have seen a traceback.
"""

import contextlib
import io
import json
import os
import sys
import time
import traceback

from mnistlab.cli import main

with open(sys.argv[1]) as fh:
    commands = json.load(fh)
results = []
for argv in commands:
    err = io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 - whatever escapes is what the test is looking for
            code = "escaped"
            err.write(traceback.format_exc())
    results.append(
        {"argv": argv, "code": code, "stderr": err.getvalue(), "seconds": time.process_time() - start}
    )
    if os.environ.get("MNISTLAB_TEST_IMPORT_LOG"):
        with open(os.environ["MNISTLAB_TEST_IMPORT_LOG"], "a") as log:
            log.write("--\n")  # the modules first imported by the next command follow
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh, indent=1)
