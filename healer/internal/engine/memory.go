package engine

import (
	"context"
	"sync"
	"time"

	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

type memoryState int

const (
	memoryNone    memoryState = iota // not leading, or never loaded
	memoryLoading                    // a load is under way
	memoryReady                      // loaded for this leadership
)

type memoryLoad struct {
	m   replica.Memory
	err error
}

// leading says whether this healer may act now: it leads (G11), and the guards' memory of
// every earlier leader is loaded, so that a new leader neither repeats an eviction within
// the cooldown nor starts one before the last replacement is healthy. Losing the lead
// forgets it: the next leadership loads it again.
func (e *Engine) leading(ctx context.Context) bool {
	if e.mode.Leader != nil && !e.mode.Leader.IsLeader() {
		e.memoryState = memoryNone
		return false
	}
	switch e.memoryState {
	case memoryReady:
		return true
	case memoryLoading:
		return false
	}
	if e.mode.Memory == nil {
		e.memoryState = memoryReady
		return true
	}
	e.memoryState = memoryLoading
	go func() {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		m, err := e.mode.Memory.Load(lctx)
		select {
		case e.memoryCh <- memoryLoad{m: m, err: err}:
		case <-ctx.Done():
		}
	}()
	return false
}

// memoryLoaded takes a loaded memory in; a failed load is tried again at the next
// evaluation (no action without it: when unsure, do not evict).
func (e *Engine) memoryLoaded(l memoryLoad) {
	if e.memoryState != memoryLoading {
		return // leadership lost meanwhile
	}
	if l.err != nil {
		e.log.Warn("guards' memory not loaded; no action until it is", "err", l.err)
		e.memoryState = memoryNone
		return
	}
	now := e.now()
	e.guards.memory = l.m
	for _, a := range l.m.Actions {
		if a.At.After(e.guards.lastAny) {
			e.guards.lastAny = a.At
		}
		if r := e.replicas[a.Replica]; r != nil && a.At.After(r.guard.lastAction) {
			r.guard.lastAction = a.At
		}
	}
	e.memoryState = memoryReady
	fields := map[string]any{"evictionsLastHour": len(l.m.Actions)}
	if p := l.m.Pending; p != nil {
		fields["awaitingReplacementOf"] = p.Replica
		fields["evictedAgo"] = now.Sub(p.At).Round(time.Millisecond).String()
	}
	e.cfg.Audit.Info(audit.EventMemory, "guards' memory loaded: cooldowns, budgets and the awaited replacement of earlier leaders hold", fields)
}

// saveMemory writes the guards' memory for any later leader, in the background.
func (e *Engine) saveMemory(ctx context.Context) {
	if e.mode.Memory == nil {
		return
	}
	m := e.guards.memory
	m.Actions = append([]replica.ActionRecord(nil), m.Actions...)
	seq := e.memoryOut.next()
	go func() {
		if err := e.memoryOut.save(ctx, e.mode.Memory, m, seq); err != nil {
			e.log.Warn("saving the guards' memory", "err", err)
		}
	}()
}

// memoryWriter orders the saves of the memory: each is numbered when the engine takes its
// snapshot (next, on the engine's goroutine), and one that would overwrite a newer snapshot
// already saved is skipped, so that two saves in flight cannot leave the older in the cluster.
type memoryWriter struct {
	seq   uint64 // the engine's goroutine only
	mu    sync.Mutex
	saved uint64
}

func (w *memoryWriter) next() uint64 { w.seq++; return w.seq }

func (w *memoryWriter) save(ctx context.Context, store replica.MemoryStore, m replica.Memory, seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq <= w.saved {
		return nil // a newer memory is in the cluster already
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := store.Save(sctx, m); err != nil {
		return err
	}
	w.saved = seq
	return nil
}
