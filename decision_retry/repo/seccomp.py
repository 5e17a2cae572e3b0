"""The seccomp filter the bubblewrap sandbox loads (`bwrap --seccomp FD`), assembled here as a
classic BPF program: no libseccomp, no compiler.

What it refuses, with EPERM (x86-64 only; elsewhere `program()` is None and the sandbox says so):
* new namespaces: `unshare`, `setns`, `clone` with any CLONE_NEW* flag, `clone3` (ENOSYS, so
  that the C library falls back to `clone`, where the flags can be checked), the new mount API
  and `mount`, `umount2`, `pivot_root`, `chroot`: the mounts the sandbox is made of stay as they
  are even for code that could win capabilities in a nested user namespace;
* terminal injection: `ioctl` TIOCSTI and TIOCLINUX (bubblewrap's documentation advises it);
* kernel interfaces tests have no use for and exploits often start from: `bpf`,
  `perf_event_open`, `userfaultfd`, the keyring (`add_key`, `keyctl`, `request_key`),
  `open_by_handle_at`, module and kexec loading, `acct`, `quotactl`, `swapon`, `reboot`,
  `syslog`;
* any other ABI than x86-64 (32-bit `int 0x80`, x32) with ENOSYS.
Everything else is allowed.
"""

from __future__ import annotations

import errno
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)
_IOCTL, _CLONE, _CLONE3 = 16, 56, 435
DENIED = {
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "add_key": 248, "request_key": 249, "keyctl": 250, "open_by_handle_at": 304,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
    "kexec_file_load": 320, "acct": 163, "quotactl": 179, "swapon": 167, "swapoff": 168,
    "reboot": 169, "syslog": 103,
}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
CLONE_NEW_ANY = 0x7E020080  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME

# classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data


def _arg_low(i: int) -> int:
    """Offset of the low 32 bits of argument i (little-endian): what the kernel uses of an ioctl
    request or clone flags, so high bits set by the caller change nothing."""
    return 16 + 8 * i


def program() -> bytes | None:
    """The filter as `struct sock_filter[]` bytes, or None on another architecture than x86-64."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    # (code, jump-if-true label, jump-if-false label, k); labels are names of later instructions
    code: list[tuple] = [
        (_LD_W_ABS, None, None, _ARCH),
        (_JEQ_K, None, "enosys", AUDIT_ARCH_X86_64),
        (_LD_W_ABS, None, None, _NR),
        (_JGE_K, "enosys", None, _X32_BIT),
        (_JEQ_K, "enosys", None, _CLONE3),
        (_JEQ_K, "ioctl", None, _IOCTL),
        (_JEQ_K, "clone", None, _CLONE),
        *[(_JEQ_K, "eperm", None, nr) for nr in sorted(DENIED.values())],
        (_RET_K, None, None, _ALLOW),
        ("ioctl", _LD_W_ABS, None, None, _arg_low(1)),
        (_JEQ_K, "eperm", None, TIOCSTI),
        (_JEQ_K, "eperm", None, TIOCLINUX),
        (_RET_K, None, None, _ALLOW),
        ("clone", _LD_W_ABS, None, None, _arg_low(0)),
        (_JSET_K, "eperm", None, CLONE_NEW_ANY),
        (_RET_K, None, None, _ALLOW),
        ("eperm", _RET_K, None, None, eperm),
        ("enosys", _RET_K, None, None, enosys),
    ]
    # 1) strip the labels, 2) turn jump labels into relative offsets, 3) pack
    labels, plain = {}, []
    for i, ins in enumerate(code):
        if isinstance(ins[0], str):
            labels[ins[0]] = i
            ins = ins[1:]
        plain.append(ins)
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(plain):
        jt, jf = (0 if j is None else labels[j] - i - 1 for j in (jt, jf))
        out += struct.pack("=HBBI", op, jt, jf, k)
    return bytes(out)
