package kstatus

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Reasons, as metav1.StatusReason spells them.
const (
	ReasonBadRequest         = "BadRequest"
	ReasonUnauthorized       = "Unauthorized"
	ReasonForbidden          = "Forbidden"
	ReasonNotFound           = "NotFound"
	ReasonAlreadyExists      = "AlreadyExists"
	ReasonTooManyRequests    = "TooManyRequests"
	ReasonServiceUnavailable = "ServiceUnavailable"
	ReasonInternalError      = "InternalError"
	ReasonBadGateway         = "BadGateway"
)

// Status is the subset of metav1.Status that tether writes.
type Status struct {
	Kind       string   `json:"kind"`
	APIVersion string   `json:"apiVersion"`
	Metadata   struct{} `json:"metadata"`
	Status     string   `json:"status"`
	Message    string   `json:"message"`
	Reason     string   `json:"reason"`
	Code       int      `json:"code"`
}

// New returns a failure Status.
func New(code int, reason, message string) Status {
	return Status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: message, Reason: reason, Code: code}
}

// Write writes a failure Status with the given HTTP code, reason and message.
func Write(w http.ResponseWriter, code int, reason, message string) {
	body, _ := json.Marshal(New(code, reason, message))
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// Decode reads a failure Status from a response body; ok is false when the
// body is not one.
func Decode(body []byte) (st Status, ok bool) {
	if json.Unmarshal(body, &st) != nil || st.Kind != "Status" || st.Message == "" {
		return Status{}, false
	}
	return st, true
}
