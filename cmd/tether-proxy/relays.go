package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// relayRequired is the refusal of a command with neither --relay nor a
// remembered relay, or without --cluster.
const relayRequired = "--relay and --cluster are required (tether-proxy login --relay URL remembers the relay, so later commands need only --cluster)"

// relayProfiles are the relays `tether-proxy login` remembered, so that
// later commands need only --cluster: the last one logged in to is the
// default, and --relay NAME picks another by its name (the URL's host).
type relayProfiles struct {
	Current string                  `json:"current"`
	Relays  map[string]relayProfile `json:"relays"`
}

// relayProfile is one remembered relay.
type relayProfile struct {
	URL string `json:"url"`
	// CA is the absolute path of the --relay-ca file given at login.
	CA string `json:"ca,omitempty"`
}

// relaysFile is where the profiles live: os.UserConfigDir()/tether/relays.json.
func relaysFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find your configuration directory for the remembered relays: %w", err)
	}
	return filepath.Join(dir, "tether", "relays.json"), nil
}

func loadRelays() (relayProfiles, string, error) {
	p := relayProfiles{Relays: map[string]relayProfile{}}
	file, err := relaysFile()
	if err != nil {
		return p, "", err
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return p, file, nil
	}
	if err != nil {
		return p, file, fmt.Errorf("read the remembered relays: %w", err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, file, fmt.Errorf("%s is not tether's list of relays (%w): fix or delete it, and log in again", file, err)
	}
	if p.Relays == nil {
		p.Relays = map[string]relayProfile{}
	}
	return p, file, nil
}

// rememberRelay records relayURL (and its CA file) under its host name and
// makes it the default, returning the name. The file is replaced whole.
func rememberRelay(relayURL, caFile string) (string, error) {
	u, err := url.Parse(relayURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("--relay %q: want https://host[:port]", relayURL)
	}
	if caFile != "" {
		if caFile, err = filepath.Abs(caFile); err != nil {
			return "", fmt.Errorf("--relay-ca: %w", err)
		}
	}
	p, file, err := loadRelays()
	if err != nil {
		return "", err
	}
	name := u.Host
	p.Relays[name] = relayProfile{URL: strings.TrimSuffix(relayURL, "/"), CA: caFile}
	p.Current = name
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", fmt.Errorf("remember the relay: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".relays-*.json")
	if err != nil {
		return "", fmt.Errorf("remember the relay: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		_ = tmp.Close()
		return "", fmt.Errorf("remember the relay: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("remember the relay: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return "", fmt.Errorf("remember the relay: %w", err)
	}
	return name, nil
}

// recallRelay fills in a command's --relay and --relay-ca from the
// remembered relays: no --relay means the default one; a --relay without
// "://" is a remembered relay's name; a --relay URL without --relay-ca
// gets the CA remembered with it. With nothing remembered it leaves them,
// and the command says --relay is required.
func recallRelay(relayURL, relayCA *string) error {
	if *relayURL != "" && strings.Contains(*relayURL, "://") && *relayCA != "" {
		return nil
	}
	p, file, err := loadRelays()
	if err != nil {
		return err
	}
	var prof relayProfile
	switch {
	case *relayURL == "":
		if p.Current == "" {
			return nil
		}
		prof = p.Relays[p.Current]
	case !strings.Contains(*relayURL, "://"):
		var ok bool
		if prof, ok = p.Relays[*relayURL]; !ok {
			names := make([]string, 0, len(p.Relays))
			for n := range p.Relays {
				names = append(names, n)
			}
			sort.Strings(names)
			return fmt.Errorf("--relay %s: no relay of that name in %s (remembered: %s); give its URL, https://host:port, or log in to it with tether-proxy login --relay URL", *relayURL, file, strings.Join(names, ", "))
		}
	default:
		for _, r := range p.Relays {
			if r.URL == strings.TrimSuffix(*relayURL, "/") {
				prof = r
			}
		}
		if prof.URL == "" {
			return nil
		}
	}
	*relayURL = prof.URL
	if *relayCA == "" {
		*relayCA = prof.CA
	}
	return nil
}
