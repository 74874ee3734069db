"""fakekt answers the seeded request sequence of Tests/kt_compare.py as the real ktserver did
(Fixtures/kt/compare/transcript.jsonl): HTTP RPC in every encoding, cursors, match_*, REST,
report/status and the binary protocol."""
import os
import shutil
import subprocess
import tempfile

import kt_compare
from qs_ports import port as listener_port, start, stop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRANSCRIPT = os.path.join(ROOT, "Fixtures", "kt", "compare", "transcript.jsonl")


def test_fakekt_answers_the_recorded_ktserver_transcript(capsys):
    binary = os.path.abspath(os.path.join(os.environ.get("QS_BIN_DIR", os.path.join(ROOT, ".build", "debug")), "fakekt"))
    work = tempfile.mkdtemp(prefix="fakekt-compare-")
    try:
        os.mkdir(os.path.join(work, "ulog"))
        with open(os.path.join(work, "fakekt.log"), "w") as log:
            proc, listeners = start([binary, "-host", "127.0.0.1", "-port", "0", "-sid", "7", "-ulog", os.path.join(work, "ulog"), "-le"]
                                    + [name for name, _ in kt_compare.DATABASES],
                                    ready_flag="-ready-file", stdout=subprocess.DEVNULL, stderr=log, cwd=work)
        try:
            code = kt_compare.main(["check", "--port", str(listener_port(listeners, "kt")), "--transcript", TRANSCRIPT])
            out = capsys.readouterr()
            assert code == 0, out.out[:4000] + out.err
            assert "1713 requests, 0 differences" in out.err
        finally:
            assert stop(proc) == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
