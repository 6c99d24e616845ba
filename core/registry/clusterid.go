package registry

import (
	"errors"
	"fmt"
)

// ErrInvalidClusterID is wrapped by every error ValidateClusterID returns.
var ErrInvalidClusterID = errors.New("invalid cluster ID")

// MaxClusterIDLen is the longest cluster ID: a DNS label.
const MaxClusterIDLen = 63

// ValidateClusterID reports whether id is a valid cluster ID: 1 to 63
// characters of a-z, 0-9 and '-', starting and ending with a letter or digit.
// Nothing is normalised first: "Prod", "prod." and "%70rod" are refused, not
// turned into "prod".
func ValidateClusterID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidClusterID)
	}
	if len(id) > MaxClusterIDLen {
		return fmt.Errorf("%w: %d bytes long, at most %d allowed", ErrInvalidClusterID, len(id), MaxClusterIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(id)-1:
		default:
			return fmt.Errorf("%w: %q: byte %d (%q) not allowed; use a-z, 0-9 and inner '-'", ErrInvalidClusterID, id, i, c)
		}
	}
	return nil
}
