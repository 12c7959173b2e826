package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Leftovers lists what a cluster left behind: processes carrying its marker, network namespaces and
// links with its name prefix, host mounts under its state folder. Empty after a clean Stop. With
// an empty stateDir and index 0 it lists every dnspulse cluster's leftovers.
func Leftovers(stateDir string, index int) []string {
	var out []string
	for _, pid := range markedPIDs(stateDir) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("process %d: %s", pid, strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")))
	}
	prefix := namePrefix
	if index > 0 {
		prefix = fmt.Sprintf("%s%d", namePrefix, index)
	}
	re := regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `(br|v|p|-)`)
	if index == 0 {
		re = regexp.MustCompile("^" + namePrefix + `[0-9]+(br|v|p|-)`)
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if re.MatchString(e.Name()) {
				out = append(out, "netns "+e.Name())
			}
		}
	}
	if ents, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range ents {
			if re.MatchString(e.Name()) {
				out = append(out, "link "+e.Name())
			}
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 {
				continue
			}
			mp := f[4]
			if (stateDir != "" && strings.HasPrefix(mp, stateDir)) || (strings.HasPrefix(mp, "/run/netns/") && re.MatchString(filepath.Base(mp))) {
				out = append(out, "mount "+mp)
			}
		}
	}
	return out
}

// markedPIDs are the processes whose environment carries markerEnv (= stateDir, or any value when
// stateDir is empty).
func markedPIDs(stateDir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := []byte(markerEnv + "=" + stateDir)
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if (stateDir == "" && bytes.HasPrefix(kv, want)) || (stateDir != "" && bytes.Equal(kv, want)) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// CleanupAll removes whatever any dnspulse cluster left behind (`make cluster-down`): processes
// (SIGCONT, SIGKILL), network namespaces, links and bridges, and state folders in the temp dir.
// Idempotent: on a clean machine it does nothing.
func CleanupAll(ctx context.Context, logf func(string, ...any)) error {
	var errs []error
	pids := markedPIDs("")
	for _, pid := range pids {
		logf("kill process %d", pid)
		_ = syscall.Kill(pid, syscall.SIGCONT)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(markedPIDs("")) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // waiting for the kernel to reap: no event to wait on for non-children
	}
	re := regexp.MustCompile("^" + namePrefix + `[0-9]+(br|v|p|-)`)
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if re.MatchString(e.Name()) {
				logf("delete netns %s", e.Name())
				if _, err := run(ctx, "ip", "netns", "del", e.Name()); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if ents, err := os.ReadDir("/sys/class/net"); err == nil {
		for _, e := range ents {
			if re.MatchString(e.Name()) && linkExists(e.Name()) {
				logf("delete link %s", e.Name())
				if _, err := run(ctx, "ip", "link", "del", e.Name()); err != nil && linkExists(e.Name()) {
					errs = append(errs, err)
				}
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "dnspulse-cluster-*"))
	for _, d := range dirs {
		logf("remove %s", d)
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if left := Leftovers("", 0); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still left: %s", strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// Leftovers lists what this cluster left behind; empty after a clean Stop.
func (c *Cluster) Leftovers() []string {
	idx := -1
	if c.net != nil {
		idx = c.net.index
	}
	if idx <= 0 {
		return Leftovers(c.StateDir, 999) // no network was created: only processes and mounts can be left
	}
	return Leftovers(c.StateDir, idx)
}
