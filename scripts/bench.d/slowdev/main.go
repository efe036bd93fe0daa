// Command slowdev serves a file as a slow device for scripts/bench: it mounts
// a one-file FUSE file system whose file reads the bytes of a backing file,
// answering each read request only after a fixed latency, as network block
// storage does. Reads bypass the page cache (direct I/O), so every read of
// the file pays the latency, and requests are answered concurrently, so
// several reads in flight overlap their waits.
//
//	slowdev [-latency 1ms] [-max-request 128K] [-name dev] [-ready FILE] BACKING MOUNTPOINT
//
// A read larger than -max-request is cut by the kernel into requests of at
// most that size, sent one after another: with the defaults a 1 MiB read
// takes 8 ms, one stream of reads gets at most 128 MiB/s, and N reads in
// flight up to N times that. It needs root (mount(2) of a FUSE file system
// through /dev/fuse; no fusermount). It runs until SIGINT or SIGTERM, then
// unmounts. -ready FILE is written once the file can be read.
//
// It stands in for a device-mapper delay target ("0 SECTORS delay DEV 0 MS")
// on kernels without device-mapper; it speaks just enough of the FUSE
// protocol (lookup, getattr, open, read, release) for reading one file.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FUSE opcodes and flags (linux/fuse.h).
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opOpen        = 14
	opRead        = 15
	opStatfs      = 17
	opRelease     = 18
	opFlush       = 25
	opInit        = 26
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42

	initMaxPages = 1 << 22 // FUSE_MAX_PAGES: init_out.max_pages is valid
	fopenDirect  = 1 << 0  // FOPEN_DIRECT_IO: bypass the page cache

	inHeaderLen  = 40
	outHeaderLen = 16
	attrLen      = 88

	rootID = 1
	fileID = 2
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "slowdev:", err)
		os.Exit(1)
	}
}

func run() error {
	latency := flag.Duration("latency", time.Millisecond, "time before each read request is answered")
	maxReq := flag.String("max-request", "128K", "largest read request, 4K to 1M (a power of two)")
	name := flag.String("name", "dev", "name of the file in the mount")
	ready := flag.String("ready", "", "write this file once the mount is ready")
	flag.Parse()
	if flag.NArg() != 2 {
		return errors.New("usage: slowdev [flags] BACKING MOUNTPOINT")
	}
	reqSize, err := parseSize(*maxReq)
	if err != nil || reqSize < 4096 || reqSize > 1<<20 || reqSize&(reqSize-1) != 0 {
		return fmt.Errorf("bad -max-request %q: want a power of two from 4K to 1M", *maxReq)
	}
	backing, err := os.Open(flag.Arg(0))
	if err != nil {
		return err
	}
	defer backing.Close()
	fi, err := backing.Stat()
	if err != nil {
		return err
	}
	mnt := flag.Arg(1)

	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=%d", dev.Fd(), reqSize)
	if err := unix.Mount("slowdev", mnt, "fuse.slowdev", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_RDONLY, data); err != nil {
		return fmt.Errorf("mount %q: %w", mnt, err)
	}
	var once sync.Once
	unmount := func() { once.Do(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) }) }
	defer unmount()

	s := &server{dev: dev, backing: backing, size: uint64(fi.Size()), name: *name, latency: *latency, maxPages: uint16(reqSize / 4096)}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		unmount()
	}()

	done := make(chan error, 1)
	const workers = 72 // more than the deepest queue the bench asks for
	for range workers {
		go func() { done <- s.serve() }()
	}
	if *ready != "" {
		go func() {
			// The mount answers once INIT is through: stat the file.
			p := mnt + "/" + *name
			for range 500 {
				if _, err := os.Stat(p); err == nil {
					_ = os.WriteFile(*ready, []byte(p+"\n"), 0o644)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			fmt.Fprintf(os.Stderr, "slowdev: %s did not appear\n", p)
			unmount()
		}()
	}
	err = <-done
	unmount()
	if n := s.reads.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "slowdev: %d read requests, %d bytes, %.3f ms each on average\n",
			n, s.bytes.Load(), float64(s.nanos.Load())/float64(n)/1e6)
	}
	return err
}

func parseSize(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	return n * mult, err
}

type server struct {
	dev      *os.File
	backing  *os.File
	size     uint64
	name     string
	latency  time.Duration
	maxPages uint16

	reads, bytes, nanos atomic.Uint64 // read requests answered, their bytes and time
}

// serve reads requests from /dev/fuse and answers them until the file
// system is unmounted (ENODEV). Several serve loops run at once.
func (s *server) serve() error {
	in := make([]byte, 64<<10)
	out := make([]byte, outHeaderLen+(1<<20))
	for {
		n, err := unix.Read(int(s.dev.Fd()), in)
		switch {
		case errors.Is(err, unix.ENODEV):
			return nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOENT):
			continue // ENOENT: the request was interrupted before we read it
		case err != nil:
			return fmt.Errorf("read /dev/fuse: %w", err)
		case n < inHeaderLen:
			return fmt.Errorf("short request of %d bytes", n)
		}
		opcode := binary.NativeEndian.Uint32(in[4:])
		unique := binary.NativeEndian.Uint64(in[8:])
		node := binary.NativeEndian.Uint64(in[16:])
		body := in[inHeaderLen:n]
		if opcode == opForget || opcode == opBatchForget || opcode == opInterrupt {
			continue // no reply
		}
		payload, errno := s.handle(opcode, node, body, out[outHeaderLen:])
		if errno != 0 {
			payload = nil
		}
		total := outHeaderLen + len(payload)
		binary.NativeEndian.PutUint32(out[0:], uint32(total))
		binary.NativeEndian.PutUint32(out[4:], uint32(-int32(errno)))
		binary.NativeEndian.PutUint64(out[8:], unique)
		if _, err := unix.Write(int(s.dev.Fd()), out[:total]); err != nil && !errors.Is(err, unix.ENOENT) {
			if errors.Is(err, unix.ENODEV) {
				return nil
			}
			return fmt.Errorf("write /dev/fuse: %w", err)
		}
	}
}

// handle answers one request into buf (which has room for 1 MiB) and
// returns the reply's payload, or an errno.
func (s *server) handle(opcode uint32, node uint64, body, buf []byte) ([]byte, syscall.Errno) {
	le := binary.NativeEndian
	switch opcode {
	case opInit:
		if len(body) < 8 || le.Uint32(body[0:]) != 7 {
			return nil, unix.EPROTO
		}
		minor := min(le.Uint32(body[4:]), 31)
		p := buf[:64]
		clear(p)
		le.PutUint32(p[0:], 7)
		le.PutUint32(p[4:], minor)
		le.PutUint32(p[8:], 0) // max_readahead: no readahead
		le.PutUint32(p[12:], initMaxPages)
		le.PutUint16(p[16:], 64) // max_background
		le.PutUint16(p[18:], 48) // congestion_threshold
		le.PutUint32(p[20:], 4096)
		le.PutUint32(p[24:], 1) // time_gran
		le.PutUint16(p[28:], s.maxPages)
		return p, 0
	case opDestroy:
		return nil, 0
	case opLookup:
		name := string(body)
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if node != rootID || name != s.name {
			return nil, unix.ENOENT
		}
		p := buf[:40+attrLen]
		clear(p)
		le.PutUint64(p[0:], fileID)
		le.PutUint64(p[16:], 3600) // entry_valid
		le.PutUint64(p[24:], 3600) // attr_valid
		s.attr(p[40:], fileID)
		return p, 0
	case opGetattr:
		if node != rootID && node != fileID {
			return nil, unix.ENOENT
		}
		p := buf[:16+attrLen]
		clear(p)
		le.PutUint64(p[0:], 3600)
		s.attr(p[16:], node)
		return p, 0
	case opOpen:
		if node != fileID {
			return nil, unix.EISDIR
		}
		flags := le.Uint32(body[0:])
		if flags&unix.O_ACCMODE != unix.O_RDONLY {
			return nil, unix.EROFS
		}
		p := buf[:16]
		clear(p)
		le.PutUint32(p[8:], fopenDirect)
		return p, 0
	case opRead:
		if node != fileID || len(body) < 24 {
			return nil, unix.EINVAL
		}
		off := le.Uint64(body[8:])
		size := uint64(le.Uint32(body[16:]))
		start := time.Now()
		if off >= s.size {
			size = 0
		}
		size = min(size, s.size-min(off, s.size), uint64(len(buf)))
		p := buf[:size]
		if size > 0 {
			if _, err := s.backing.ReadAt(p, int64(off)); err != nil {
				return nil, unix.EIO
			}
		}
		if d := s.latency - time.Since(start); d > 0 {
			// nanosleep(2) directly: time.Sleep overshoots a
			// millisecond by about as much again here.
			ts := unix.NsecToTimespec(int64(d))
			for unix.Nanosleep(&ts, &ts) == unix.EINTR {
			}
		}
		s.reads.Add(1)
		s.bytes.Add(size)
		s.nanos.Add(uint64(time.Since(start)))
		return p, 0
	case opRelease, opFlush:
		return nil, 0
	case opStatfs:
		p := buf[:80]
		clear(p)
		le.PutUint32(p[40:], 4096) // bsize
		le.PutUint32(p[44:], 255)  // namelen
		le.PutUint32(p[48:], 4096) // frsize
		return p, 0
	default:
		return nil, unix.ENOSYS
	}
}

// attr fills a fuse_attr for node.
func (s *server) attr(p []byte, node uint64) {
	le := binary.NativeEndian
	le.PutUint64(p[0:], node)
	mode, nlink, size := uint32(unix.S_IFDIR|0o555), uint32(2), uint64(0)
	if node == fileID {
		mode, nlink, size = unix.S_IFREG|0o444, 1, s.size
	}
	le.PutUint64(p[8:], size)
	le.PutUint64(p[16:], (size+511)/512)
	le.PutUint32(p[60:], mode)
	le.PutUint32(p[64:], nlink)
	le.PutUint32(p[80:], 4096) // blksize
}
