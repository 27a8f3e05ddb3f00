import KeelBuffers

/// The two ends of a connection's filter stack: above the top filter, events reach the handler (with
/// pause, accumulation and the order of half-close kept right); below the bottom filter, the socket.
extension TCPConnection {
    func stackReachedHandlerEstablished() {
        guard let stack = filterStack, !stack.handlerEstablished, state == .open else { return }
        stack.handlerEstablished = true
        deliverEstablished()
    }

    /// Bytes from the top filter: to the handler, unless reading is paused (stashed) or the handler's
    /// own buffer is accumulating them (appended).
    func stackReachedHandler(_ buffer: consuming IOBuffer) {
        guard let stack = filterStack, state == .open else { return }
        if !stack.handlerEstablished { stackReachedHandlerEstablished() }
        if isReadingPaused || !stack.handlerStash.isEmpty {
            stack.handlerStash.append(buffer.detach())
            return
        }
        deliverToHandler(buffer, stack: stack)
    }

    func deliverToHandler(_ buffer: consuming IOBuffer, stack: TCPFilterStack) {
        guard let detached = stack.handlerAccumulator.take() else { return deliverReceived(buffer) }
        var accumulated = detached.reattach()
        let taken = buffer.withUnsafeReadableBytes { accumulated.append($0) }
        buffer.consume(taken)
        deliverReceived(accumulated)
        if buffer.readableBytes > 0 { stackReachedHandler(buffer) }
    }

    func stackReachedHandlerPeerHalfClosed() {
        guard let stack = filterStack, state == .open else { return }
        if !stack.handlerEstablished { stackReachedHandlerEstablished() }
        if let accumulated = stack.handlerAccumulator.take() {
            deliverReceived(accumulated.reattach())  // what the handler gathered is its own: hand it back
        }
        if !stack.handlerStash.isEmpty {
            stack.handlerHalfClosePending = true  // after the stashed bytes, on resume
            return
        }
        deliverPeerHalfClosed()
    }

    func stackReachedHandlerWritability(_ isWritable: Bool) {
        guard state == .open else { return }
        deliverWritabilityChanged(isWritable)
    }

    func stackReachedHandlerWriteCompleted(_ bytes: Int) {
        guard state == .open else { return }
        deliverWriteCompleted(bytes)
    }

    func stackReachedHandlerError(_ error: any Error) {
        guard state == .open else { return }
        deliverErrorCaught(error)
    }

    func emitWritabilityChanged(_ isWritable: Bool) {
        if filterStack == nil { return deliverWritabilityChanged(isWritable) }  // no reference counting on the common path
        if let bottom = filterStack?.bottom {
            bottom.filter?.writabilityChanged(isWritable, context: bottom)
        } else {
            deliverWritabilityChanged(isWritable)
        }
    }

    func emitWriteCompleted(_ bytes: Int) {
        if filterStack == nil { return deliverWriteCompleted(bytes) }  // no reference counting on the common path
        if let bottom = filterStack?.bottom {
            bottom.filter?.writeCompleted(bytes, context: bottom)
        } else {
            deliverWriteCompleted(bytes)
        }
    }
}

extension TCPConnection {
    /// The first filter of type `type` in this connection's stack, bottom first (nil without one): how a
    /// handler reaches a layer's state, such as the TLS filter's peer certificate. A filter that did its
    /// job and left the stack while the connection is open is found too (the PROXY protocol filter keeps
    /// the header it read).
    ///
    /// Call it on the connection's thread.
    public func filter<Filter: TCPConnectionFilter>(ofType type: Filter.Type) -> Filter? {
        guard let stack = filterStack else { return nil }
        return stack.filters.lazy.compactMap { $0 as? Filter }.first ?? stack.removedFilter(ofType: type)
    }
}
