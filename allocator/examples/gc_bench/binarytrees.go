// binary-trees as gc_bench runs it on spanalloc::gc and gc-arena (main.rs, ours.rs, arena.rs): a stretch
// tree of depth max+1, a long-lived tree of depth max, then for each depth d in 4, 6, .., max,
// 2^(max-d+4) trees built and checked. Prints the checksum (the nodes counted) and the time the loop
// took in nanoseconds. gc_bench builds and runs it with GOMAXPROCS=1 when `go` is installed.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

type node struct{ left, right *node }

func bottomUp(d int) *node {
	if d == 0 {
		return &node{}
	}
	return &node{bottomUp(d - 1), bottomUp(d - 1)}
}

func (n *node) check() uint64 {
	if n.left == nil {
		return 1
	}
	return 1 + n.left.check() + n.right.check()
}

func main() {
	max, err := strconv.Atoi(os.Args[1])
	if err != nil {
		panic(err)
	}
	t0 := time.Now()
	out := bottomUp(max + 1).check()
	long := bottomUp(max)
	for d := 4; d <= max; d += 2 {
		for i := 0; i < 1<<(max-d+4); i++ {
			out += bottomUp(d).check()
		}
	}
	out += long.check()
	fmt.Println(out, time.Since(t0).Nanoseconds())
}
