"""What kind of file a path is, in words, for messages: the image sources and the serving client
refuse the same special files (FIFOs, sockets, devices, folders) with the same words. A leaf module."""

import stat


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"
