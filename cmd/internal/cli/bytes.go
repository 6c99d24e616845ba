package cli

import (
	"fmt"
	"strconv"
	"strings"
)

// Bytes is a flag value holding a size in bytes, written as a number with an
// optional binary unit: 262144, 256Ki, 4Mi, 4MiB, 2Gi.
type Bytes int64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}}

// ParseBytes parses a size as Bytes.Set does.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "B")
	shift := uint(0)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, shift = rest, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 262144, 256Ki, 4Mi or 2Gi", s)
	}
	return n << shift, nil
}

// String implements pflag.Value.
func (b *Bytes) String() string {
	n := int64(*b)
	for i := len(byteUnits) - 1; i >= 0; i-- {
		u := byteUnits[i]
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Set implements pflag.Value.
func (b *Bytes) Set(s string) error {
	n, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = Bytes(n)
	return nil
}

// Type implements pflag.Value.
func (*Bytes) Type() string { return "bytes" }
