// swiftvisor-firecracker: binds the API socket first, then becomes `swiftvisor firecracker`.
//
// Firecracker's clients start the binary and send their first request at once, without
// waiting for the socket to appear (pyrecracker does; Firecracker's own target for API
// readiness is a few milliseconds). swiftvisor needs tens of milliseconds to load its
// libraries before it can bind, and far longer on a loaded machine. This launcher is a
// small static C program: it binds and listens on `--api-sock` within a millisecond of
// exec, then replaces itself with the `swiftvisor` binary beside it, which inherits the
// listening socket (the variables below name it) and serves it. Connections made in
// between wait in the socket's backlog, as with systemd's socket activation.
//
// It decides nothing else: with --no-api, --version or --help, or when the socket cannot
// be bound (the path exists, it is too long), it passes no socket and swiftvisor reports
// whatever is wrong. Install it, or a link to it, under the name `firecracker`.
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int bind_socket(const char *path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) return -1;
    strcpy(address.sun_path, path);
    // Not close-on-exec: swiftvisor inherits it.
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        close(fd);
        return -1;
    }
    // The same backlog as swiftvisor's own bind.
    if (listen(fd, 64) != 0) {
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    const char *socket_path = "/run/firecracker.socket";
    int wants_socket = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--api-sock") == 0 && i + 1 < argc) {
            socket_path = argv[++i];
        } else if (strcmp(argv[i], "--no-api") == 0 || strcmp(argv[i], "--version") == 0 ||
                   strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            wants_socket = 0;
        }
    }

    // swiftvisor is in the same folder as this program (after links are followed).
    char self[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        fprintf(stderr, "swiftvisor-firecracker: cannot find its own path: %s\n", strerror(errno));
        return 1;
    }
    self[length] = 0;
    char *slash = strrchr(self, '/');
    if (slash == NULL || (size_t)(slash - self) + sizeof "/swiftvisor" > sizeof self) {
        fprintf(stderr, "swiftvisor-firecracker: unexpected path %s\n", self);
        return 1;
    }
    strcpy(slash + 1, "swiftvisor");

    if (wants_socket) {
        int fd = bind_socket(socket_path);
        if (fd >= 0) {
            char number[16];
            snprintf(number, sizeof number, "%d", fd);
            setenv("SWIFTVISOR_API_SOCKET_FD", number, 1);
            setenv("SWIFTVISOR_API_SOCKET_PATH", socket_path, 1);
        }
    }

    // argv[0] "firecracker" selects swiftvisor's Firecracker mode; the rest is passed as is.
    char **arguments = calloc((size_t)argc + 1, sizeof *arguments);
    if (arguments == NULL) return 1;
    arguments[0] = "firecracker";
    for (int i = 1; i < argc; i++) arguments[i] = argv[i];
    execv(self, arguments);
    fprintf(stderr, "swiftvisor-firecracker: cannot run %s: %s\n", self, strerror(errno));
    const char *bound = getenv("SWIFTVISOR_API_SOCKET_PATH");
    if (bound != NULL) unlink(bound);
    return 1;
}
