package engine

import (
	"testing"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// At most a tenth of the replicas (at least two) are boosted at once, counted without a
// pass over the fleet: a replica boosted again does not count twice, and a boost that
// ended frees its place.
func TestMayBoostBoundsBoosts(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	e := &Engine{now: func() time.Time { return now }}
	rs := make([]*replicaState, 30)
	for i := range rs {
		rs[i] = &replicaState{}
		e.order = append(e.order, rs[i])
	}
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for i, want := range []bool{true, true, true, false} {
		if got := e.mayBoost(rs[i], at(0)); got != want {
			t.Fatalf("replica %d at 0: %v, want %v (3 at once)", i, got, want)
		}
	}
	if !e.mayBoost(rs[0], at(100)) || e.boosted != 3 {
		t.Fatalf("a boosted replica boosted again: refused or counted twice (%d)", e.boosted)
	}
	if e.mayBoost(rs[3], at(499)) {
		t.Fatal("three boosts still running at 499ms")
	}
	if !e.mayBoost(rs[3], at(500)) || e.boosted != 2 {
		t.Fatalf("at 500ms two boosts ended: %d counted", e.boosted)
	}
	now = at(550)
	e.unboost(rs[3])
	if e.boosted != 1 {
		t.Fatalf("a replica gone while boosted still counted: %d", e.boosted)
	}
	if !e.mayBoost(rs[4], at(700)) || e.boosted != 1 {
		t.Fatalf("at 700ms only the new boost runs: %d", e.boosted)
	}
}

// The engine's count of replicas per state follows the transitions.
func TestMoveState(t *testing.T) {
	e := &Engine{inState: map[api.State]int{api.Unknown: 2}}
	a, b := &replicaState{state: api.Unknown}, &replicaState{state: api.Unknown}
	e.moveState(a, api.Healthy)
	e.moveState(b, api.Degraded)
	e.moveState(a, api.Global)
	if e.inState[api.Unknown] != 0 || e.inState[api.Healthy] != 0 || e.inState[api.Degraded] != 1 || e.inState[api.Global] != 1 {
		t.Errorf("counts %v", e.inState)
	}
}
