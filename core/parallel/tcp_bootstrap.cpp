#include "core/parallel/tcp_bootstrap.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "core/errors.h"

namespace upcycle {

namespace {

using Clock = std::chrono::steady_clock;

// A socket, closed when it goes.
class Socket {
public:
    explicit Socket(int fd = -1) : fd_(fd) {}
    ~Socket() {
        if (fd_ >= 0) ::close(fd_);
    }
    Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
    Socket& operator=(Socket&& other) noexcept {
        std::swap(fd_, other.fd_);
        return *this;
    }
    int fd() const { return fd_; }

private:
    int fd_;
};

double seconds_left(Clock::time_point deadline) {
    return std::chrono::duration<double>(deadline - Clock::now()).count();
}

std::string where(const TcpRendezvous& at) { return fmt::format("{}:{}", at.host, at.port); }

// Waits until fd is ready for `events` or the deadline passes (then throws).
void wait_ready(int fd, short events, Clock::time_point deadline, const std::string& what) {
    while (true) {
        const double left = seconds_left(deadline);
        if (left <= 0) throw std::runtime_error("rendezvous timed out: " + what);
        pollfd p{fd, events, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
        if (ready > 0) return;
        if (ready < 0 && errno != EINTR) {
            throw std::runtime_error(
                fmt::format("rendezvous: poll failed ({}): {}", std::strerror(errno), what));
        }
    }
}

void send_all(int fd, const uint8_t* data, std::size_t n, Clock::time_point deadline,
              const std::string& what) {
    while (n > 0) {
        wait_ready(fd, POLLOUT, deadline, what);
        const ssize_t sent = ::send(fd, data, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent <= 0) {
            throw std::runtime_error(
                fmt::format("rendezvous: send failed ({}): {}", std::strerror(errno), what));
        }
        data += sent;
        n -= static_cast<std::size_t>(sent);
    }
}

void receive_all(int fd, uint8_t* data, std::size_t n, Clock::time_point deadline,
                 const std::string& what) {
    while (n > 0) {
        wait_ready(fd, POLLIN, deadline, what);
        const ssize_t got = ::recv(fd, data, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            throw std::runtime_error(
                fmt::format("rendezvous: the connection closed early: {}", what));
        }
        data += got;
        n -= static_cast<std::size_t>(got);
    }
}

addrinfo* resolve(const TcpRendezvous& at, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (passive) hints.ai_flags = AI_PASSIVE;
    addrinfo* found = nullptr;
    const std::string port = std::to_string(at.port);
    const int status =
        ::getaddrinfo(passive ? nullptr : at.host.c_str(), port.c_str(), &hints, &found);
    if (status != 0) {
        throw UserError("", "MASTER_ADDR",
                        fmt::format("cannot resolve {}: {}", where(at), ::gai_strerror(status)));
    }
    return found;
}

std::vector<uint8_t> serve(const TcpRendezvous& at, int size, const std::vector<uint8_t>& bytes,
                           Clock::time_point deadline) {
    addrinfo* found = resolve(at, /*passive=*/true);
    Socket listener;
    for (addrinfo* a = found; a != nullptr && listener.fd() < 0; a = a->ai_next) {
        Socket s(::socket(a->ai_family, a->ai_socktype, a->ai_protocol));
        if (s.fd() < 0) continue;
        const int yes = 1;
        ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
        if (::bind(s.fd(), a->ai_addr, a->ai_addrlen) == 0 && ::listen(s.fd(), size) == 0) {
            listener = std::move(s);
        }
    }
    ::freeaddrinfo(found);
    if (listener.fd() < 0) {
        throw std::runtime_error(fmt::format("rendezvous: rank 0 cannot listen on port {} ({})",
                                             at.port, std::strerror(errno)));
    }
    const uint64_t length = bytes.size();
    for (int served = 1; served < size; ++served) {
        const std::string what =
            fmt::format("rank 0 on port {} waiting for rank {} of {}", at.port, served, size);
        wait_ready(listener.fd(), POLLIN, deadline, what);
        Socket peer(::accept(listener.fd(), nullptr, nullptr));
        if (peer.fd() < 0) {
            --served;  // a failed accept is not a rank served
            continue;
        }
        send_all(peer.fd(), reinterpret_cast<const uint8_t*>(&length), sizeof(length), deadline,
                 what);
        send_all(peer.fd(), bytes.data(), bytes.size(), deadline, what);
    }
    return bytes;
}

std::vector<uint8_t> fetch(const TcpRendezvous& at, int rank, Clock::time_point deadline) {
    const std::string what = fmt::format("rank {} reaching rank 0 at {}", rank, where(at));
    while (true) {
        addrinfo* found = resolve(at, /*passive=*/false);
        Socket connected;
        for (addrinfo* a = found; a != nullptr && connected.fd() < 0; a = a->ai_next) {
            Socket s(::socket(a->ai_family, a->ai_socktype, a->ai_protocol));
            if (s.fd() >= 0 && ::connect(s.fd(), a->ai_addr, a->ai_addrlen) == 0) {
                connected = std::move(s);
            }
        }
        ::freeaddrinfo(found);
        if (connected.fd() >= 0) {
            uint64_t length = 0;
            receive_all(connected.fd(), reinterpret_cast<uint8_t*>(&length), sizeof(length),
                        deadline, what);
            constexpr uint64_t kMaxBytes = 1 << 20;  // an id is 128 bytes; refuse nonsense
            if (length > kMaxBytes) {
                throw std::runtime_error("rendezvous: not an upcycle rank 0 at " + where(at));
            }
            std::vector<uint8_t> bytes(length);
            receive_all(connected.fd(), bytes.data(), bytes.size(), deadline, what);
            return bytes;
        }
        if (seconds_left(deadline) <= 0) throw std::runtime_error("rendezvous timed out: " + what);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 not up yet
    }
}

}  // namespace

TcpRendezvous TcpRendezvous::from_environment() {
    TcpRendezvous at;
    const char* host = std::getenv("MASTER_ADDR");
    const char* port = std::getenv("MASTER_PORT");
    if (host == nullptr || *host == '\0') {
        throw UserError("", "MASTER_ADDR",
                        "not set: a job launched without mpirun needs rank 0's address in "
                        "MASTER_ADDR (and a free port in MASTER_PORT) to bootstrap NCCL");
    }
    char* end = nullptr;
    const long value = port ? std::strtol(port, &end, 10) : 0;
    if (port == nullptr || *end != '\0' || value < 1 || value > 65535) {
        throw UserError("", "MASTER_PORT",
                        fmt::format("expected a TCP port (1–65535), found '{}'", port ? port : ""));
    }
    at.host = host;
    at.port = static_cast<int>(value);
    return at;
}

std::vector<uint8_t> tcp_broadcast_from_rank0(const TcpRendezvous& at, int rank, int size,
                                              const std::vector<uint8_t>& bytes,
                                              double timeout_seconds) {
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout_seconds));
    if (size <= 1) return bytes;
    return rank == 0 ? serve(at, size, bytes, deadline) : fetch(at, rank, deadline);
}

}  // namespace upcycle
