package cliutil

import "strings"

// isUsageError recognises the plain errors urfave/cli returns for bad flags.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{
		"flag provided but not defined",
		"flag needs an argument",
		"invalid value",
		"invalid boolean",
		"Required flag",
		"Required flags",
	} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
