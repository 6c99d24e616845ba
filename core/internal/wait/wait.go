// Package wait holds the one way tether's background loops pause: for a
// duration, or until their context ends. It is internal to core and belongs
// to no side, so the relay, the agent and the tunnel share it.
package wait

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx ends, and reports whether d passed (false:
// ctx ended). A d of zero or less returns at once, true unless ctx ended.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
