package clusterid

import (
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid cluster ID")

// MaxLen is the longest cluster ID: a DNS label.
const MaxLen = 63

// Validate reports whether id is a valid cluster ID: 1 to 63
// characters of a-z, 0-9 and '-', starting and ending with a letter or digit.
// Nothing is normalised first: "Prod", "prod." and "%70rod" are refused, not
// turned into "prod".
func Validate(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalid)
	}
	if len(id) > MaxLen {
		return fmt.Errorf("%w: %d bytes long, at most %d allowed", ErrInvalid, len(id), MaxLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(id)-1:
		default:
			return fmt.Errorf("%w: %q: byte %d (%q) not allowed; use a-z, 0-9 and inner '-'", ErrInvalid, id, i, c)
		}
	}
	return nil
}
