// Package kstatus writes errors as Kubernetes Status objects, the JSON that
// kubectl and client-go decode and print, so that a refusal by tether reads
// like one by the API server: "Error from server (Forbidden): ...".
package kstatus
