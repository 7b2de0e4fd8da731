// A Go net/http server that reloads under baton without failing a request,
// also on keep-alive connections. Copy the parts marked RECIPE.
//
//	go build -o app examples/go-lameduck/main.go
//	baton run --listen http=127.0.0.1:8080 --ready auto -- ./app
//
// The socket: fd 3 (LISTEN_FDS, systemd's protocol), or a port of its own
// when started without baton. Readiness: --ready auto sees Go wait on it.
//
// The drain (lame duck): on SIGTERM the server keeps serving for a grace
// period, every response saying "Connection: close", so each client opens
// its next connection to the new generation; only then does Shutdown
// close what is left. Shutdown alone closes idle keep-alive connections
// at once, racing the clients that are sending on them right then (about
// 10 failed requests per reload under keep-alive load, docs/any-server.md);
// so does SetKeepAlivesEnabled(false).
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// RECIPE: longer than the time a client keeps a connection idle between
// two requests; baton's --drain-timeout must be longer than grace plus
// the longest request.
const grace = 1 * time.Second

func main() {
	pid := os.Getpid()
	listener, err := listen()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-lameduck pid=%d error: %v\n", pid, err)
		os.Exit(2)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", strconv.Itoa(pid))
		fmt.Fprintln(w, "ok")
	})
	// RECIPE: wrap your handler; once draining, each response closes its connection.
	var draining atomic.Bool
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		app.ServeHTTP(w, r)
	})}

	// RECIPE: the lame-duck drain.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	drained := make(chan struct{})
	go func() {
		<-stop
		draining.Store(true) // every response from now on: Connection: close
		time.Sleep(grace)    // the clients move to the new generation
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		server.Shutdown(ctx) // stop accepting, close what is idle, wait for the rest
		close(drained)
	}()

	fmt.Fprintf(os.Stderr, "go-lameduck pid=%d serving on %s\n", pid, listener.Addr())
	if err := server.Serve(listener); err != http.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "go-lameduck pid=%d error: %v\n", pid, err)
		os.Exit(1)
	}
	<-drained
	fmt.Fprintf(os.Stderr, "go-lameduck pid=%d drained\n", pid)
}

// RECIPE: the socket from baton (or systemd), else bind one.
func listen() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") != "" {
		return net.FileListener(os.NewFile(3, "http"))
	}
	return net.Listen("tcp", "127.0.0.1:8080")
}
