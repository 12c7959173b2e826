package schedule

import "sync"

// Mailbox hands results from the views to the engine without ever blocking the one who
// puts them: a slice behind a lock, and a signal that something is waiting. The engine
// takes everything at once (Take), so a burst of results costs it one wake-up, and a
// busy engine never slows the probes or the heartbeat readers down (they would otherwise
// wait on a full channel while their own deadlines pass). What waits is bounded by what
// the views produce between two takes.
//
// With latest-wins (NewLatest), a result replaces the one waiting for the same key: the
// heartbeat reader's, where only the newest read of a replica matters.
type Mailbox[T any] struct {
	key   func(T) string // nil: keep every item
	mu    sync.Mutex
	items []T
	index map[string]int // latest-wins: where each key's item waits
	ready chan struct{}
}

// NewMailbox keeps every item put, in order.
func NewMailbox[T any]() *Mailbox[T] {
	return &Mailbox[T]{ready: make(chan struct{}, 1)}
}

// NewLatest keeps, per key, only the latest item put since the last Take.
func NewLatest[T any](key func(T) string) *Mailbox[T] {
	return &Mailbox[T]{key: key, index: map[string]int{}, ready: make(chan struct{}, 1)}
}

// Put adds v.
func (m *Mailbox[T]) Put(v T) {
	m.mu.Lock()
	m.putLocked(v)
	m.mu.Unlock()
	m.signal()
}

// PutAll adds vs, in order.
func (m *Mailbox[T]) PutAll(vs []T) {
	if len(vs) == 0 {
		return
	}
	m.mu.Lock()
	for _, v := range vs {
		m.putLocked(v)
	}
	m.mu.Unlock()
	m.signal()
}

func (m *Mailbox[T]) putLocked(v T) {
	if m.key != nil {
		k := m.key(v)
		if i, ok := m.index[k]; ok {
			m.items[i] = v
			return
		}
		m.index[k] = len(m.items)
	}
	m.items = append(m.items, v)
}

func (m *Mailbox[T]) signal() {
	select {
	case m.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when items wait; one signal may stand for many items.
func (m *Mailbox[T]) Ready() <-chan struct{} { return m.ready }

// Take returns every waiting item and keeps buf (the caller's previous batch, emptied) to
// collect the next ones: two buffers that swap, so a steady flow of results allocates
// nothing.
func (m *Mailbox[T]) Take(buf []T) []T {
	clear(buf) // drop what the old items referenced
	m.mu.Lock()
	out := m.items
	m.items = buf[:0]
	clear(m.index)
	m.mu.Unlock()
	return out
}
