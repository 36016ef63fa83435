using Npgsql;

namespace HighlanderPG.Messaging;

/// <summary>
/// A cluster singleton's inbox: the messages and calls sent to it, delivered to the child of whichever node leads it.
/// Injected into the child's scope like <see cref="ILeadership"/> (<c>AddHighlanderMessaging</c>; fencing must be on).
/// </summary>
/// <remarks>
/// Read messages in order with <see cref="ReceiveAsync"/> and acknowledge each in your own transaction, together with its
/// effects (<see cref="AckAsync"/>, or <see cref="ReplyAsync{TReply}"/> for a call): the acknowledgement is guarded by the
/// fencing epoch, so a stale leader's fails (<see cref="Fencing.StaleEpochException"/>) and its transaction rolls back.
/// A message taken but not acknowledged when this node stops leading is delivered again to the next leader.
/// <see cref="ProcessAsync"/> does all of that in a loop. See docs/messaging.md.
/// </remarks>
public interface ISingletonInbox
{
    /// <summary>The singleton's name.</summary>
    string Name { get; }

    /// <summary>
    /// Waits for the next message (the oldest pending one this leadership has not taken yet) and takes it. Fires
    /// <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> or the leadership's
    /// <see cref="ILeadership.LostToken"/> fires.
    /// </summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    Task<InboxMessage> ReceiveAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Acknowledges <paramref name="message"/> in <paramref name="transaction"/> (any connection to the nodes' database):
    /// it counts as processed if and only if the transaction commits. Fails with <see cref="Fencing.StaleEpochException"/>
    /// when this node no longer leads (roll back), and with <see cref="MessagingException"/>
    /// (<see cref="MessagingError.NotPending"/>) when it was acknowledged or dead-lettered already.
    /// </summary>
    /// <param name="message">A message taken by this leadership.</param>
    /// <param name="transaction">Your transaction, holding the message's effects.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    Task AckAsync(InboxMessage message, NpgsqlTransaction transaction, CancellationToken cancellationToken = default);

    /// <summary>Acknowledges a call with its reply, in <paramref name="transaction"/>; the caller gets the reply when the transaction commits.</summary>
    /// <typeparam name="TReply">The reply's type.</typeparam>
    /// <param name="message">A call taken by this leadership.</param>
    /// <param name="reply">The reply.</param>
    /// <param name="transaction">Your transaction, holding the call's effects.</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    Task ReplyAsync<TReply>(InboxMessage message, TReply reply, NpgsqlTransaction transaction, CancellationToken cancellationToken = default);

    /// <summary>
    /// Gives <paramref name="message"/> back as a failed delivery: it is delivered again (first, keeping the order), or
    /// dead-lettered once it has failed <see cref="HighlanderMessagingOptions.MaxDeliveries"/> times.
    /// </summary>
    /// <param name="message">A message taken by this leadership and not acknowledged.</param>
    /// <param name="reason">Why (kept as the message's last error).</param>
    /// <param name="cancellationToken">Cancels the statement.</param>
    /// <returns><see langword="true"/> when it was dead-lettered.</returns>
    Task<bool> NackAsync(InboxMessage message, string reason, CancellationToken cancellationToken = default);

    /// <summary>
    /// Processes messages until cancelled or until this node stops leading: for each, opens a connection from the
    /// messaging data source, begins a transaction, calls <paramref name="handler"/> with it, acknowledges the message
    /// in it (unless the handler did, e.g. with <see cref="ReplyAsync{TReply}"/>) and commits. A handler that throws
    /// rolls back and the message is nacked (a failed delivery). The handler's token fires when this node stops leading,
    /// when <paramref name="cancellationToken"/> fires, and at a call's deadline.
    /// </summary>
    /// <param name="handler">The work for one message; its writes go through the transaction.</param>
    /// <param name="cancellationToken">Stops processing (the child's stopping token).</param>
    Task ProcessAsync(Func<InboxMessage, NpgsqlTransaction, CancellationToken, Task> handler, CancellationToken cancellationToken = default);
}

/// <summary>One message taken from a singleton's inbox.</summary>
public sealed class InboxMessage
{
    private readonly IMessageSerializer _serializer;

    internal InboxMessage(IMessageSerializer serializer, string singleton, long id, string json, string? type, DateTimeOffset sentAt, DateTimeOffset? expiresAt, int delivery, bool isCall, long epoch)
    {
        _serializer = serializer;
        Singleton = singleton;
        Id = id;
        Json = json;
        Type = type;
        SentAt = sentAt;
        ExpiresAt = expiresAt;
        Delivery = delivery;
        IsCall = isCall;
        Epoch = epoch;
    }

    /// <summary>The message's id (increasing in the order messages were stored).</summary>
    public long Id { get; }

    /// <summary>The singleton it was sent to.</summary>
    public string Singleton { get; }

    /// <summary>The payload's JSON text.</summary>
    public string Json { get; }

    /// <summary>The sender's label of the payload's type (the .NET client puts the type's full name), or <see langword="null"/>.</summary>
    public string? Type { get; }

    /// <summary>When it was sent (the server's clock).</summary>
    public DateTimeOffset SentAt { get; }

    /// <summary>After this it is not delivered again (time-to-live, or a call's deadline); <see langword="null"/>: never expires.</summary>
    public DateTimeOffset? ExpiresAt { get; }

    /// <summary>Which delivery this is: 1 the first; more after a failed delivery or a hand-over before its acknowledgement.</summary>
    public int Delivery { get; }

    /// <summary>Whether it is a call (its sender waits for a reply: <see cref="ISingletonInbox.ReplyAsync{TReply}"/>).</summary>
    public bool IsCall { get; }

    /// <summary>Whether it has been acknowledged (in a transaction that may not have committed yet).</summary>
    public bool IsAcknowledged { get; internal set; }

    internal long Epoch { get; }

    /// <summary>The payload as <typeparamref name="T"/>.</summary>
    /// <typeparam name="T">The type to read.</typeparam>
    /// <exception cref="MessagingException">The JSON cannot be read as <typeparamref name="T"/>.</exception>
    public T GetPayload<T>() => Serialization.FromJson<T>(_serializer, Json);
}
