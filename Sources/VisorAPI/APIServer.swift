import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import VisorHost

/// Why the API socket could not be opened.
package struct APIServerError: Error, CustomStringConvertible {
    package let description: String
}

/// Firecracker's REST API over HTTP/1.1 on a Unix socket: SwiftNIO parses HTTP, each
/// connection is served by its own task (requests on one connection in order, pipelined or
/// not), and every request goes to the `VMMController`. The VM runs on its own threads; a
/// slow or broken client holds only its own connection.
package final class APIServer: Sendable {
    package struct Limits: Sendable {
        /// The largest request body, in bytes (`--http-api-max-payload-size`).
        package var maxPayload = 51_200
        /// Connections served at once; one more is answered 503 and closed, as Firecracker does.
        package var maxConnections = 10
        /// A connection that sends nothing for this many seconds is closed.
        package var idleTimeoutSeconds: Int64 = 60

        package init() {}
    }

    private typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    package let path: String
    private let limits: Limits
    private let controller: VMMController
    private let group: MultiThreadedEventLoopGroup
    private let server: NIOAsyncChannel<Connection, Never>
    private let open = Atomic<Int>(0)
    /// The connections being served, closed by `close()` before the event loop stops.
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// Set when `run()` has started, and when it has returned (every connection's task done).
    private let running = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    /// Requests read and not yet answered: `close()` lets them finish (an InstanceStart whose
    /// guest ends at once must still get its 204 before the process exits).
    private let answering = Atomic<Int>(0)

    /// Binds the socket at `path`, which must not exist (Firecracker refuses a stale one too).
    package static func bind(path: String, limits: Limits = Limits(), controller: VMMController) async throws(APIServerError)
        -> APIServer
    {
        try await start(path: path, limits: limits, controller: controller) { bootstrap, initializer in
            try await bootstrap.bind(
                unixDomainSocketPath: path, cleanupExistingSocketFile: false, childChannelInitializer: initializer)
        }
    }

    /// Serves a socket already bound and listening at `path` (by `swiftvisor-firecracker`,
    /// before this process had loaded); connections made before now are waiting in its backlog.
    package static func adopt(
        descriptor: Int32, path: String, limits: Limits = Limits(), controller: VMMController
    ) async throws(APIServerError) -> APIServer {
        try await start(path: path, limits: limits, controller: controller) { bootstrap, initializer in
            try await bootstrap.bind(descriptor, childChannelInitializer: initializer)
        }
    }

    private typealias ChildInitializer = @Sendable (any Channel) -> EventLoopFuture<Connection>

    private static func start(
        path: String, limits: Limits, controller: VMMController,
        listen: (ServerBootstrap, @escaping ChildInitializer) async throws -> NIOAsyncChannel<Connection, Never>
    ) async throws(APIServerError) -> APIServer {
        // One event-loop thread is plenty for a control API and keeps start-up short.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let idleTimeout = TimeAmount.seconds(limits.idleTimeoutSeconds)
        do {
            let bootstrap = ServerBootstrap(group: group).serverChannelOption(.backlog, value: 64)
            let server = try await listen(bootstrap) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(IdleCloser())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
            return APIServer(path: path, limits: limits, controller: controller, group: group, server: server)
        } catch {
            try? await group.shutdownGracefully()
            throw APIServerError(description: "cannot listen on the API socket \(path): \(error)")
        }
    }

    private init(
        path: String, limits: Limits, controller: VMMController, group: MultiThreadedEventLoopGroup,
        server: NIOAsyncChannel<Connection, Never>
    ) {
        self.path = path
        self.limits = limits
        self.controller = controller
        self.group = group
        self.server = server
    }

    /// Serves connections until `close()`.
    package func run() async {
        running.store(true, ordering: .releasing)
        defer { finished.store(true, ordering: .releasing) }
        do {
            try await withThrowingDiscardingTaskGroup { tasks in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        tasks.addTask { await self.serve(connection) }
                    }
                }
            }
        } catch {
            // The listening socket closed: nothing more to serve.
        }
    }

    /// Stops listening, lets requests being answered finish (for up to a second), closes
    /// every open connection, and removes the socket file. The event loop stops only once
    /// `run()` has returned: a connection's task that still closed its channel on a stopped
    /// loop would be an error (and a crash in later SwiftNIO).
    package func close() async {
        try? await server.channel.close()
        for _ in 0..<500 where answering.load(ordering: .acquiring) > 0 {
            try? await Task.sleep(for: .milliseconds(2))
        }
        for channel in channels.withLock({ Array($0.values) }) { try? await channel.close() }
        if running.load(ordering: .acquiring) {
            // Every task was just given a closed channel; they end within milliseconds.
            for _ in 0..<500 where !finished.load(ordering: .acquiring) {
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        if finished.load(ordering: .acquiring) || !running.load(ordering: .acquiring) {
            try? await group.shutdownGracefully()
        }
        HostIO.removeFile(path)
    }

    private func serve(_ connection: Connection) async {
        let count = open.add(1, ordering: .relaxed).newValue
        let key = ObjectIdentifier(connection.channel)
        channels.withLock { $0[key] = connection.channel }
        defer {
            channels.withLock { _ = $0.removeValue(forKey: key) }
            open.subtract(1, ordering: .relaxed)
        }
        // Every exit path of the handler below writes only after a request head: NIO's
        // pipeline handler traps on a response to no request.
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let requestHead):
                    // NIO's pipeline handler allows a response only once a request has begun,
                    // so even the refusal of an extra connection waits for its first head.
                    if count > limits.maxConnections {
                        let refusal = #"{ "error": "Too many open connections" }"#
                        try await write(
                            APIResponse(status: 503, body: Array(refusal.utf8), headers: []), keepAlive: false,
                            to: outbound)
                        return
                    }
                    head = requestHead
                    body.removeAll(keepingCapacity: true)
                    if let length = requestHead.headers.first(name: "content-length").flatMap({ Int($0) }),
                        length > limits.maxPayload
                    {
                        try await refuseOversize(length, to: outbound)
                        return
                    }
                case .body(let buffer):
                    let total = body.count + buffer.readableBytes
                    guard total <= limits.maxPayload else {
                        // A chunked body that grew past the limit.
                        try await refuseOversize(total, to: outbound)
                        return
                    }
                    body.append(contentsOf: buffer.readableBytesView)
                case .end:
                    guard let request = head else { continue }
                    head = nil
                    answering.add(1, ordering: .relaxed)
                    defer { answering.subtract(1, ordering: .releasing) }
                    let response = await controller.handle(
                        method: request.method.rawValue, path: request.uri, body: body)
                    let keepAlive = request.isKeepAlive
                    try await write(response, keepAlive: keepAlive, to: outbound)
                    if !keepAlive { return }
                }
            }
        }
    }

    /// Answers a body over the limit at once and closes the connection: the rest of the
    /// body is never read.
    private func refuseOversize(_ size: Int, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>)
        async throws
    {
        let message = "Request payload with size \(size) is larger than the limit of \(limits.maxPayload) allowed by server."
        try await write(.fault(message), keepAlive: false, to: outbound)
    }

    private func write(
        _ response: APIResponse, keepAlive: Bool, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Server", value: "Firecracker API")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        if response.status != 204 {
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(response.body.count))
        }
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        try await outbound.write(.head(head))
        if !response.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
        try await outbound.write(.end(nil))
    }
}

/// Closes a connection when `IdleStateHandler` reports it idle.
private final class IdleCloser: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
