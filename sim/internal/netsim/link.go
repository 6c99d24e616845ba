package netsim

import (
	"math/rand/v2"
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
	bandwidth int       // bytes per second; 0 is unlimited
	paused    int       // stalls, blackholes and partitions in force
	since     time.Time // when the first of the pauses in force began
	parted    int       // partitions in force: new dials hang too
	changed   chan struct{}
	seed      [2]uint64 // the network's seed and the link's hash
	halves    uint64    // connections' directions made on the link so far
}

// newRand returns the jitter source of the link's next connection.
func (l *Link) newRand() *rand.Rand {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.halves++
	return rand.New(rand.NewPCG(l.seed[0], l.seed[1]^l.halves*0x9e3779b97f4a7c15))
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

// Pause stops delivery on the link (a stall or a blackhole: bytes that
// arrive from now on are held, as TCP retransmits them, until Resume;
// bytes that arrived before can still be read); partition also makes new
// dials hang. Pauses nest.
func (l *Link) Pause(partition bool) {
	l.mu.Lock()
	if l.paused == 0 {
		l.since = time.Now()
	}
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

// heldSince reports whether the link is paused, and since when: bytes that
// arrive after then are held.
func (l *Link) heldSince() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since, l.paused > 0
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
