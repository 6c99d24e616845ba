package registry

// WriteTransactions counts the write transactions r's store committed.
func WriteTransactions(r *Registry) int64 { return r.store.writes() }
