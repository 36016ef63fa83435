using HighlanderPG.Fencing;
using Npgsql;
using NpgsqlTypes;

namespace HighlanderPG.Messaging;

/// <summary>The inbox of one leadership (one child incarnation): takes under its epoch, acknowledges guarded by it.</summary>
internal sealed class SingletonInbox : ISingletonInbox
{
    private static readonly TimeSpan PurgeEvery = TimeSpan.FromMinutes(1);

    private readonly MessagingHub _hub;
    private readonly ILeadership _leadership;
    private readonly long _epoch;
    private long? _lastPurge; // null: due at the first receive of this leadership

    public SingletonInbox(MessagingHub hub, ILeadership leadership)
    {
        _hub = hub;
        _leadership = leadership;
        _epoch = leadership.FencingEpoch ?? throw new InvalidOperationException(MessagingHub.FencingRequired($"The inbox of singleton '{leadership.Name}'"));
    }

    public string Name => _leadership.Name;

    public async Task<InboxMessage> ReceiveAsync(CancellationToken cancellationToken = default)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _leadership.LostToken);
        var token = linked.Token;
        await _hub.Registered.WaitAsync(token).ConfigureAwait(false);
        await _hub.EnsureListeningAsync(token).ConfigureAwait(false);
        var wake = _hub.WakeFor(Name);
        while (true)
        {
            token.ThrowIfCancellationRequested();
            await PurgeIfDueAsync(token).ConfigureAwait(false);
            var signal = wake.Current;
            InboxMessage? message;
            try
            {
                message = await TakeAsync(token).ConfigureAwait(false);
            }
            catch (StaleEpochException)
            {
                // Another node has taken over: this leadership is about to end; wait for it rather than fail the child.
                await WaitUntilLostAsync(cancellationToken).ConfigureAwait(false);
                throw;
            }

            if (message is not null)
            {
                return message;
            }

            try
            {
                await signal.WaitAsync(_hub.Messaging.PollInterval, _hub.Time, token).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // the backstop poll
            }
        }
    }

    private async Task<InboxMessage?> TakeAsync(CancellationToken cancellationToken)
    {
        await using var connection = await _hub.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand($"SELECT id, payload::text, type, sent_at, expires_at, deliveries, is_call FROM {_hub.Schema}.take_message($1, $2, $3)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _leadership.Namespace });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Name });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = _epoch });
        try
        {
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            if (!await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                return null;
            }

            return new InboxMessage(
                _hub.Messaging.Serializer,
                Name,
                reader.GetInt64(0),
                reader.GetString(1),
                reader.IsDBNull(2) ? null : reader.GetString(2),
                reader.GetFieldValue<DateTimeOffset>(3),
                reader.IsDBNull(4) ? null : reader.GetFieldValue<DateTimeOffset>(4),
                reader.GetInt32(5),
                reader.GetBoolean(6),
                _epoch);
        }
        catch (PostgresException ex) when (ex.SqlState == FencingSql.StaleEpochSqlState)
        {
            throw new StaleEpochException(Name, _epoch, ex);
        }
    }

    private async Task WaitUntilLostAsync(CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _leadership.LostToken);
        try
        {
            await Task.Delay(Timeout.InfiniteTimeSpan, _hub.Time, linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            throw new OperationCanceledException($"Singleton '{Name}' is no longer led by this node (epoch {_epoch} is stale).", linked.Token);
        }
    }

    private async Task PurgeIfDueAsync(CancellationToken cancellationToken)
    {
        var now = _hub.Time.GetTimestamp();
        if (_lastPurge is { } last && _hub.Time.GetElapsedTime(last, now) < PurgeEvery)
        {
            return;
        }

        _lastPurge = now;
        try
        {
            await using var connection = await _hub.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand(MessagingSql.Purge(_hub.Schema), connection);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _leadership.Namespace });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Name });
            cmd.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = _hub.Messaging.Retention });
            await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (NpgsqlException ex)
        {
            Diagnostics.Log.MessagingPurgeFailed(_hub.Log, ex, Name);
        }
    }

    public Task AckAsync(InboxMessage message, NpgsqlTransaction transaction, CancellationToken cancellationToken = default) =>
        AckCoreAsync(message, transaction, null, cancellationToken);

    public Task ReplyAsync<TReply>(InboxMessage message, TReply reply, NpgsqlTransaction transaction, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (!message.IsCall)
        {
            throw new InvalidOperationException($"Message {message.Id} is not a call (nobody waits for a reply): acknowledge it with AckAsync.");
        }

        return AckCoreAsync(message, transaction, Serialization.ToJson(_hub.Messaging.Serializer, reply), cancellationToken);
    }

    private async Task AckCoreAsync(InboxMessage message, NpgsqlTransaction transaction, string? replyJson, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentNullException.ThrowIfNull(transaction);
        CheckOwn(message);
        var connection = transaction.Connection ?? throw new InvalidOperationException("The transaction is already completed.");
        if (message.IsAcknowledged)
        {
            throw new MessagingException(MessagingError.NotPending, $"Message {message.Id} was already acknowledged in this leadership.");
        }

        await using var cmd = new NpgsqlCommand($"SELECT {_hub.Schema}.ack_message($1, $2, $3)", connection, transaction);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = message.Id });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = _epoch });
        cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Jsonb, Value = (object?)replyJson ?? DBNull.Value });
        try
        {
            await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == FencingSql.StaleEpochSqlState)
        {
            throw new StaleEpochException(Name, _epoch, ex);
        }
        catch (PostgresException ex) when (ex.SqlState == MessagingSql.NotPendingSqlState)
        {
            throw SingletonClient.Translate(ex, Name);
        }

        message.IsAcknowledged = true;
    }

    public async Task<bool> NackAsync(InboxMessage message, string reason, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        CheckOwn(message);
        await using var connection = await _hub.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand($"SELECT {_hub.Schema}.nack_message($1, $2, $3)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = message.Id });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = _epoch });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = reason ?? "nacked" });
        var state = await cmd.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
        if (state == "dead")
        {
            Diagnostics.Log.MessageDeadLettered(_hub.Log, Name, message.Id, message.Delivery, reason ?? "nacked");
            return true;
        }

        return false;
    }

    public async Task ProcessAsync(Func<InboxMessage, NpgsqlTransaction, CancellationToken, Task> handler, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(handler);
        while (true)
        {
            var message = await ReceiveAsync(cancellationToken).ConfigureAwait(false);
            using var deadline = message.ExpiresAt is { } expires
                ? new CancellationTokenSource(Max(expires - _hub.Time.GetUtcNow(), TimeSpan.FromMilliseconds(1)), _hub.Time)
                : new CancellationTokenSource();
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _leadership.LostToken, deadline.Token);
            var token = linked.Token;
            try
            {
                await using var connection = await _hub.DataSource.OpenConnectionAsync(token).ConfigureAwait(false);
                await using var tx = await connection.BeginTransactionAsync(token).ConfigureAwait(false);
                await handler(message, tx, token).ConfigureAwait(false);
                if (!message.IsAcknowledged)
                {
                    await AckAsync(message, tx, token).ConfigureAwait(false);
                }

                await tx.CommitAsync(token).ConfigureAwait(false);
            }
            catch (StaleEpochException)
            {
                await WaitUntilLostAsync(cancellationToken).ConfigureAwait(false);
                throw;
            }
            catch (Exception) when (cancellationToken.IsCancellationRequested || _leadership.LostToken.IsCancellationRequested)
            {
                // Stopping or no longer leading: the message stays taken by this epoch and goes to the next leader.
                throw new OperationCanceledException($"Processing of singleton '{Name}' stopped.", cancellationToken.IsCancellationRequested ? cancellationToken : _leadership.LostToken);
            }
            catch (Exception ex)
            {
                var reason = deadline.IsCancellationRequested ? "its deadline passed while it was processed" : ex.GetType().Name + ": " + ex.Message;
                Diagnostics.Log.MessageFailed(_hub.Log, ex, Name, message.Id, message.Delivery);
                try
                {
                    await NackAsync(message, reason, cancellationToken).ConfigureAwait(false);
                }
                catch (NpgsqlException nackFailed)
                {
                    // Not redelivered in this leadership then; the next leader gets it (and counts the failed delivery).
                    Diagnostics.Log.MessageFailed(_hub.Log, nackFailed, Name, message.Id, message.Delivery);
                }
            }
        }
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private void CheckOwn(InboxMessage message)
    {
        if (message.Epoch != _epoch || message.Singleton != Name)
        {
            throw new ArgumentException($"Message {message.Id} was not taken by this inbox (singleton '{Name}', epoch {_epoch}).", nameof(message));
        }
    }
}
