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

    /// Binds the socket at `path`, which must not exist (Firecracker refuses a stale one too).
    package static func bind(path: String, limits: Limits = Limits(), controller: VMMController) async throws(APIServerError)
        -> APIServer
    {
        // One event-loop thread is plenty for a control API and keeps start-up short.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let idleTimeout = TimeAmount.seconds(limits.idleTimeoutSeconds)
        do {
            let server = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false) { channel in
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

    /// Stops listening and removes the socket file.
    package func close() async {
        try? await server.channel.close()
        try? await group.shutdownGracefully()
        HostIO.removeFile(path)
    }

    private func serve(_ connection: Connection) async {
        let count = open.add(1, ordering: .relaxed).newValue
        defer { open.subtract(1, ordering: .relaxed) }
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
