package main

import "github.com/tether-k8s/tether/cmd/internal/cli"

func main() { cli.Execute(newRootCommand()) }
