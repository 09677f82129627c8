"""The POSIX named pipe from the web server to the ingest client: the file, and writing a command into it.

One JSON command per line (`sensorhub.commands`: at most MAX_COMMAND bytes including the newline). Every
command is far smaller than PIPE_BUF (4096 bytes on Linux) and written with a single write(), so lines from
concurrent writers (several gunicorn workers) never interleave. The web side opens non-blocking and learns at
once when no client is reading. The reading side is the ingest client's (sensorhub.ingest.ledpipe).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sensorhub.commands import Command, format_command
from sensorhub.credentials import check_private_dir
from sensorhub.errors import ClientNotRunning, ConfigError, PipeError

#: How many times ensure_fifo makes the pipe again when it vanishes between "exists" and the checks.
_CREATE_ATTEMPTS = 5


def send_command(path: str | os.PathLike[str], command: Command) -> None:
    """Write one command into the pipe without ever blocking.

    Raises ClientNotRunning when no ingest client reads the pipe, PipeError when it cannot take more or is not
    the ingest client's (a pipe someone else made could be read by them).
    """
    line = format_command(command)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClientNotRunning(f"the ingest client is not running (no pipe at {path})") from None
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise ClientNotRunning(f"the ingest client is not running (nobody reads {path})") from None
        raise PipeError(f"cannot open the pipe {path}: {err.strerror}") from err
    try:
        problem = pipe_problem(os.fstat(fd))
        if problem:
            raise PipeError(f"{path} {problem}")
        written = os.write(fd, line)
    except BlockingIOError:
        raise PipeError(f"the ingest client is not keeping up: the pipe {path} is full") from None
    except BrokenPipeError:
        raise ClientNotRunning(f"the ingest client stopped reading {path}") from None
    finally:
        os.close(fd)
    if written != len(line):  # cannot happen below PIPE_BUF; never leave half a line unnoticed
        raise PipeError(f"short write to {path}")


def pipe_problem(info: os.stat_result) -> str | None:
    """Why a file cannot be our pipe: not a FIFO, another user's, or open to other users' writes."""
    if not stat.S_ISFIFO(info.st_mode):
        return "is not a named pipe"
    if info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid}), who could have planted it"
    if info.st_mode & 0o077:
        return f"can be used by other users (mode {stat.S_IMODE(info.st_mode):04o}, expected 0600)"
    return None


def ensure_fifo(path: str | os.PathLike[str]) -> Path:
    """Create the named pipe (mode 0600) if it does not exist, in a directory only its owner can write.

    Refuse a path that is something else, or a pipe that another user made or could write into: whoever
    planted it could read the commands or forge them. Several workers may call this at the same moment: it
    creates first and takes "already exists" as another worker's pipe, which it then checks like any other.
    """
    fifo = Path(path)
    try:
        fifo.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_private_dir(fifo.parent, fifo.parent.stat(), "SENSORHUB_FIFO")
    except OSError as err:
        raise PipeError(f"cannot create the directory of the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") \
            from err
    except ConfigError as err:
        raise PipeError(f"the pipe's directory is unsafe: {err}") from None
    for _attempt in range(_CREATE_ATTEMPTS):
        try:
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, 0o600)  # whatever the umask
        except FileExistsError:
            pass  # another worker made it first, or it was left behind: check what is there
        except OSError as err:
            raise PipeError(f"cannot create the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") from err
        else:
            return fifo
        try:
            info = fifo.lstat()
        except FileNotFoundError:
            continue  # removed in between (its last holder stopping): make it again
        except OSError as err:
            raise PipeError(f"cannot use the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") from err
        if not stat.S_ISFIFO(info.st_mode):
            raise PipeError(f"{fifo} exists and is not a named pipe: remove it or set SENSORHUB_FIFO")
        problem = pipe_problem(info)
        if problem:
            raise PipeError(f"refusing the pipe {fifo}: it {problem}; remove it (`rm {fifo}`) and start again")
        return fifo
    raise PipeError(f"cannot create the pipe {fifo}: it vanished {_CREATE_ATTEMPTS} times as it was made; is "
                    f"another program removing it? (set SENSORHUB_FIFO)")
