// Package rawsys makes the system calls of detour's own event loops
// without telling Go's scheduler: they are made on non-blocking
// descriptors and return at once, but on a slow (virtualised) machine
// some take longer than the 20 µs after which Go's system monitor hands
// the goroutine's processor to another thread — a thread wake-up and a
// context switch each time, which cost more than the call itself. Only
// calls that cannot block belong here.
package rawsys

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

func errno(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e // compares equal to unix.EAGAIN and the like
}

// Read is read(2).
func Read(fd int, p []byte) (int, error) {
	var b unsafe.Pointer
	if len(p) > 0 {
		b = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(b), uintptr(len(p)))
	if e != 0 {
		return 0, errno(e)
	}
	return int(n), nil
}

// Write is write(2).
func Write(fd int, p []byte) (int, error) {
	var b unsafe.Pointer
	if len(p) > 0 {
		b = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(b), uintptr(len(p)))
	if e != 0 {
		return 0, errno(e)
	}
	return int(n), nil
}

// Splice is splice(2) without offsets.
func Splice(rfd, wfd, n, flags int) (int, error) {
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, errno(e)
	}
	return int(m), nil
}

// Shutdown is shutdown(2).
func Shutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errno(e)
}

// Close is close(2). A socket with SO_LINGER set to a positive time would
// block in close: such sockets must be closed another way.
func Close(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errno(e)
}

// EpollPoll is epoll_wait(2) with a zero timeout: it takes the pending
// events (at most len(events), which must not be 0) without waiting.
func EpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, errno(e)
	}
	return int(n), nil
}

// Yield is sched_yield(2): other tasks queued on this CPU run first.
// It returns at once when none is.
func Yield() { unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// Socket is socket(2).
func Socket(domain, typ, proto int) (int, error) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	if e != 0 {
		return -1, errno(e)
	}
	return int(fd), nil
}

// SetsockoptInt is setsockopt(2) with an int value.
func SetsockoptInt(fd, level, opt, v int) error {
	v32 := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v32)), 4, 0)
	return errno(e)
}

// GetsockoptInt is getsockopt(2) of an int value.
func GetsockoptInt(fd, level, opt int) (int, error) {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), errno(e)
}

// Connect4 is connect(2) to an IPv4 address; non-blocking sockets only.
func Connect4(fd int, ip [4]byte, port uint16) error {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	return errno(e)
}

// Connect6 is connect(2) to an IPv6 address; non-blocking sockets only.
func Connect6(fd int, ip [16]byte, port uint16) error {
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	return errno(e)
}

// Writev2 is writev(2) of two buffers.
func Writev2(fd int, a, b []byte) (int, error) {
	var iov [2]unix.Iovec
	n := 0
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			iov[n].Base = &p[0]
			iov[n].SetLen(len(p))
			n++
		}
	}
	m, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if e != 0 {
		return 0, errno(e)
	}
	return int(m), nil
}

// EpollCtl is epoll_ctl(2).
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errno(e)
}

// Accept4 is accept4(2): the peer's address is written to sa (a
// sockaddr_in or sockaddr_in6; sa must not be empty), whose length is
// returned.
func Accept4(fd int, sa []byte, flags int) (nfd, salen int, err error) {
	l := uint32(len(sa))
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), uintptr(flags), 0, 0)
	if e != 0 {
		return -1, 0, errno(e)
	}
	return int(r), int(l), nil
}

// Getsockname is getsockname(2) into sa (not empty); it returns the
// address's length, at most len(sa) (a longer address is cut).
func Getsockname(fd int, sa []byte) (int, error) {
	l := uint32(len(sa))
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return 0, errno(e)
	}
	return min(int(l), len(sa)), nil
}

// Getsockopt is getsockopt(2) into b (not empty); it returns the value's
// length, at most len(b).
func Getsockopt(fd, level, opt int, b []byte) (int, error) {
	l := uint32(len(b))
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, errno(e)
	}
	return min(int(l), len(b)), nil
}

// SetLinger0 sets SO_LINGER to zero: close then resets the connection.
func SetLinger0(fd int) error {
	l := unix.Linger{Onoff: 1}
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	return errno(e)
}

// Peek is recv(2) with MSG_PEEK and MSG_DONTWAIT into b (not empty): it
// copies the bytes waiting unread without taking them, returns 0 once the
// peer's FIN is all that is left, and EAGAIN when neither. Unlike
// unix.Recvfrom it decodes no address, so it allocates nothing.
func Peek(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, errno(e)
	}
	return int(n), nil
}

// InQueue is ioctl(2) SIOCINQ: the bytes in a TCP socket's receive queue.
func InQueue(fd int) (int, error) {
	var n int32
	_, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCINQ, uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, errno(e)
	}
	return int(n), nil
}
