package netsim

import (
	"sync"
	"time"
)

// Link is one direction between two hosts: what From sends to To. Faults
// change it while connections run; every change wakes the connections on
// it.
type Link struct {
	From, To string

	mu        sync.Mutex
	latency   time.Duration
	jitter    time.Duration
	bandwidth int // bytes per second; 0 is unlimited
	paused    int // stalls, blackholes and partitions in force
	parted    int // partitions in force: new dials hang too
	changed   chan struct{}
	rnd       func() float64
}

func (l *Link) rand() float64 {
	if l.rnd == nil {
		return 0.5
	}
	return l.rnd()
}

// Shape returns the link's latency, jitter and bandwidth.
func (l *Link) Shape() (latency, jitter time.Duration, bandwidth int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.latency, l.jitter, l.bandwidth
}

// SetShape sets the link's one-way latency, jitter (uniform in
// [0, jitter)) and bandwidth (bytes per second, 0 for unlimited).
func (l *Link) SetShape(latency, jitter time.Duration, bandwidth int) {
	l.mu.Lock()
	l.latency, l.jitter, l.bandwidth = latency, jitter, bandwidth
	l.mu.Unlock()
	l.notify()
}

// Pause stops delivery on the link (a stall or a blackhole: bytes are held,
// as TCP retransmits them, until Resume); partition also makes new dials
// hang. Pauses nest.
func (l *Link) Pause(partition bool) {
	l.mu.Lock()
	l.paused++
	if partition {
		l.parted++
	}
	l.mu.Unlock()
	l.notify()
}

// Resume undoes one Pause.
func (l *Link) Resume(partition bool) {
	l.mu.Lock()
	if l.paused > 0 {
		l.paused--
	}
	if partition && l.parted > 0 {
		l.parted--
	}
	l.mu.Unlock()
	l.notify()
}

func (l *Link) isPaused() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.paused > 0
}

func (l *Link) down() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.parted > 0
}

// watch returns a channel closed at the link's next change.
func (l *Link) watch() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

func (l *Link) notify() {
	l.mu.Lock()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}
