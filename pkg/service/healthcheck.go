package service

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// HealthcheckArg is the argument that turns a service's binary into its own health probe:
// the images have no shell and no curl, so the ECS container health check runs
// ["CMD", "/<service>", "healthcheck"].
const HealthcheckArg = "healthcheck"

// healthcheckDefaultAddr is where a service serves /healthz when SORTIE_HTTP_ADDR is unset.
const healthcheckDefaultAddr = ":8080"

// Healthcheck asks the service listening on addr (SORTIE_HTTP_ADDR's form, ":8080" or
// "host:port") for /healthz and returns nil on 200.
func Healthcheck(ctx context.Context, addr string) error {
	if addr == "" {
		return fmt.Errorf("health check: SORTIE_HTTP_ADDR is empty, the HTTP server is off")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("health check: SORTIE_HTTP_ADDR %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(host, port) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check: %s answered %s", url, resp.Status)
	}
	return nil
}

// runHealthcheck is the whole process when the binary is run as `<service> healthcheck`:
// exit 0 when healthy, 1 otherwise (the error on stderr).
func runHealthcheck() int {
	addr, ok := os.LookupEnv("SORTIE_HTTP_ADDR")
	if !ok {
		addr = healthcheckDefaultAddr
	}
	if err := Healthcheck(context.Background(), strings.TrimSpace(addr)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
