// Command gen makes the test images of scripts/bench, deterministically.
//
//	gen source FILE SIZE_MIB PERCENT SEED
//	    a sparse FILE of SIZE_MIB MiB: PERCENT% of its MiBs, at random
//	    places, hold random data; the rest are zeros (holes)
//	gen mutate FILE COUNT SEED CHANGED
//	    rewrites COUNT distinct random 4 KiB blocks of FILE with new random
//	    data, and writes those new blocks, one after another, to CHANGED
//	    (its compressed size is the floor for an incremental's stream)
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func num(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gen: bad number %q\n", s)
		os.Exit(2)
	}
	return n
}

func run(args []string) error {
	if len(args) == 5 && args[0] == "source" {
		return source(args[1], num(args[2]), num(args[3]), num(args[4]))
	}
	if len(args) == 5 && args[0] == "mutate" {
		return mutate(args[1], num(args[2]), num(args[3]), args[4])
	}
	return fmt.Errorf("usage: gen source FILE SIZE_MIB PERCENT SEED | gen mutate FILE COUNT SEED CHANGED")
}

func source(name string, mib, percent, seed uint64) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(mib) << 20); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	buf := make([]byte, 1<<20)
	for _, i := range rng.Perm(int(mib))[:mib*percent/100] {
		src.Read(buf)
		if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
			return err
		}
	}
	return f.Close()
}

func mutate(name string, count, seed uint64, changed string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(changed)
	if err != nil {
		return err
	}
	defer out.Close()
	blocks := uint64(fi.Size()) / 4096
	if count > blocks {
		return fmt.Errorf("%d blocks to change, %q has %d", count, name, blocks)
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 2})
	seen := map[uint64]bool{}
	buf := make([]byte, 4096)
	for uint64(len(seen)) < count {
		b := rng.Uint64N(blocks)
		if seen[b] {
			continue
		}
		seen[b] = true
		src.Read(buf)
		if _, err := f.WriteAt(buf, int64(b)*4096); err != nil {
			return err
		}
		if _, err := out.Write(buf); err != nil {
			return err
		}
	}
	if err := out.Close(); err != nil {
		return err
	}
	return f.Close()
}
