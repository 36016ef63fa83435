using System.Collections.Concurrent;
using System.Globalization;
using HighlanderPG.Fencing;
using Npgsql;
using NpgsqlTypes;

namespace HighlanderPG.Messaging;

/// <summary>
/// Sends messages to cluster singletons and calls them, from any process with access to the database (a node of the
/// cluster or not). Messages are stored in PostgreSQL and delivered, in order, to whichever node leads the singleton;
/// nothing is lost across a hand-over. Thread-safe; keep one per process. See docs/messaging.md.
/// </summary>
/// <remarks>
/// Sending uses the data source's pooled connections. The first call opens one more connection, held for the client's
/// life, that LISTENs on a channel unique to this client for replies.
/// </remarks>
public sealed class SingletonClient : IAsyncDisposable
{
    private static readonly TimeSpan MaxCallTimeout = TimeSpan.FromDays(1);

    private readonly NpgsqlDataSource _dataSource;
    private readonly bool _ownsDataSource;
    private readonly string _schema;
    private readonly IMessageSerializer _serializer;
    private readonly TimeProvider _time;
    private readonly string _replyChannel;
    private readonly MessagingHub? _hub;
    private readonly ConcurrentDictionary<long, TaskCompletionSource<string>> _calls = new();
    private readonly ConcurrentDictionary<long, (string Reply, long At)> _early = new();
    private readonly Lock _arrivals = new(); // a call's registration and its reply's arrival, one at a time
    private readonly CancellationTokenSource _disposed = new();
    private readonly Lock _gate = new();
    private Task? _listener;
    private TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Faulted with the listener's error when it could not listen yet at all (its first attempts failed): a call then fails
    // at once with the connection's own error, as a send does, instead of waiting out its timeout. Once it has listened,
    // a dropped connection is reconnected while calls wait, as before.
    private TaskCompletionSource _listenFailed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _everListened; // under _gate

    /// <summary>A client on your data source (not disposed with the client).</summary>
    /// <param name="dataSource">A data source of the database the nodes use.</param>
    /// <param name="options">Namespace, schema and serializer; <see cref="SingletonClientOptions.ConnectionString"/> is ignored.</param>
    public SingletonClient(NpgsqlDataSource dataSource, SingletonClientOptions? options = null)
        : this(dataSource ?? throw new ArgumentNullException(nameof(dataSource)), false, options ?? new SingletonClientOptions(), TimeProvider.System)
    {
    }

    /// <summary>A client with a pooled data source of its own, built from <see cref="SingletonClientOptions.ConnectionString"/>.</summary>
    /// <param name="options">The connection string (required), namespace, schema and serializer.</param>
    public SingletonClient(SingletonClientOptions options)
        : this(BuildDataSource(options), true, options, TimeProvider.System)
    {
    }

    internal SingletonClient(NpgsqlDataSource dataSource, bool ownsDataSource, SingletonClientOptions options, TimeProvider time, MessagingHub? hub = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!FencingSql.IsValidSchema(options.Schema))
        {
            throw new ArgumentException($"{nameof(SingletonClientOptions)}.{nameof(SingletonClientOptions.Schema)} '{options.Schema}' must be {FencingSql.SchemaRule} (the nodes' FencingSchema).", nameof(options));
        }

        if (string.IsNullOrEmpty(options.Namespace))
        {
            throw new ArgumentException($"{nameof(SingletonClientOptions)}.{nameof(SingletonClientOptions.Namespace)} must not be empty (the nodes' Namespace; default \"highlander\").", nameof(options));
        }

        _dataSource = dataSource;
        _ownsDataSource = ownsDataSource;
        _schema = options.Schema;
        Namespace = options.Namespace;
        _serializer = options.Serializer ?? throw new ArgumentException($"{nameof(SingletonClientOptions)}.{nameof(SingletonClientOptions.Serializer)} must not be null.", nameof(options));
        _time = time;

        // A node's client shares the node's one LISTEN connection for messaging (the hub's); any other has its own.
        _hub = hub;
        _replyChannel = hub?.ReplyChannel ?? NewReplyChannel();
        hub?.AttachReplies(Arrived, RecheckAsync);
    }

    internal static string NewReplyChannel() => "hl_reply_" + Guid.NewGuid().ToString("N");

    /// <summary>The namespace of the singletons this client talks to.</summary>
    public string Namespace { get; }

    /// <summary>
    /// Sends <paramref name="message"/> to the singleton <paramref name="name"/>: stored durably when this returns, and
    /// delivered to whichever node leads it (now or later), in the order sent.
    /// </summary>
    /// <typeparam name="T">The payload's type (serialized to JSON).</typeparam>
    /// <param name="name">The singleton's name.</param>
    /// <param name="message">The payload.</param>
    /// <param name="timeToLive">Not delivered after this long; <see langword="null"/>: the singleton's default (none unless configured).</param>
    /// <param name="cancellationToken">Cancels the send.</param>
    /// <returns>The message's id.</returns>
    /// <exception cref="MessagingException">Unknown singleton, queue full, payload too large, a type the serializer refuses.</exception>
    public async Task<long> SendAsync<T>(string name, T message, TimeSpan? timeToLive = null, CancellationToken cancellationToken = default)
    {
        var json = Prepare(name, message, timeToLive);
        return await InsertOwnAsync(name, json, typeof(T), timeToLive, null, cancellationToken).ConfigureAwait(false);
    }

    // On a connection of its own. A pooled connection whose backend the server ended while it was idle (a server restart,
    // pg_terminate_backend) fails its first statement with 57P01-57P03 before running it: tried once more, on a new one.
    private async Task<long> InsertOwnAsync(string name, string json, Type type, TimeSpan? timeToLive, string? replyChannel, CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
                return await InsertAsync(connection, null, name, json, type, timeToLive, replyChannel, cancellationToken).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (attempt == 1 && ex.SqlState is PostgresErrorCodes.AdminShutdown or PostgresErrorCodes.CrashShutdown or PostgresErrorCodes.CannotConnectNow)
            {
            }
        }
    }

    /// <summary>
    /// Sends <paramref name="message"/> inside your transaction (an outbox): stored, and the leader told, only if it commits.
    /// </summary>
    /// <typeparam name="T">The payload's type.</typeparam>
    /// <param name="transaction">Your open transaction, on a connection to the nodes' database.</param>
    /// <param name="name">The singleton's name.</param>
    /// <param name="message">The payload.</param>
    /// <param name="timeToLive">Not delivered after this long.</param>
    /// <param name="cancellationToken">Cancels the send.</param>
    /// <returns>The message's id.</returns>
    public Task<long> SendAsync<T>(NpgsqlTransaction transaction, string name, T message, TimeSpan? timeToLive = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        var connection = transaction.Connection ?? throw new InvalidOperationException("The transaction is already completed.");
        var json = Prepare(name, message, timeToLive);
        return InsertAsync(connection, transaction, name, json, typeof(T), timeToLive, null, cancellationToken);
    }

    /// <summary>
    /// Calls the singleton <paramref name="name"/>: sends <paramref name="request"/> and waits for the reply its child
    /// stores with the acknowledgement. After <paramref name="timeout"/> (or cancellation) the call is abandoned: if no
    /// leader has taken it yet it is marked expired and never processed; if one has, it is not delivered again.
    /// </summary>
    /// <typeparam name="TRequest">The request's type.</typeparam>
    /// <typeparam name="TResponse">The reply's type.</typeparam>
    /// <param name="name">The singleton's name.</param>
    /// <param name="request">The request.</param>
    /// <param name="timeout">How long to wait for the reply (at most one day).</param>
    /// <param name="cancellationToken">Abandons the call.</param>
    /// <exception cref="TimeoutException">No reply in time.</exception>
    /// <exception cref="MessagingException">Bad input, or the call was dead-lettered or expired.</exception>
    public async Task<TResponse> CallAsync<TRequest, TResponse>(string name, TRequest request, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        if (timeout <= TimeSpan.Zero || timeout > MaxCallTimeout)
        {
            throw new ArgumentOutOfRangeException(nameof(timeout), timeout, "A call's timeout must be positive and at most one day.");
        }

        var json = Prepare(name, request, timeout);
        using var deadline = new CancellationTokenSource(timeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(deadline.Token, cancellationToken, _disposed.Token);
        try
        {
            await EnsureListeningAsync(linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested && !_disposed.IsCancellationRequested)
        {
            throw new TimeoutException($"The call to singleton '{name}' timed out after {timeout} before it was sent: its reply channel was not listened on yet (the database is slow to answer). Nothing was sent.");
        }

        var id = await InsertOwnAsync(name, json, typeof(TRequest), timeout, _replyChannel, linked.Token).ConfigureAwait(false);

        var waiter = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        (string Reply, long At) early;
        bool arrivedEarly;
        lock (_arrivals)
        {
            // Under the same lock as Arrived: a reply is either found here or finds the waiter there, never neither.
            _calls[id] = waiter;
            arrivedEarly = _early.TryRemove(id, out early);
        }

        if (arrivedEarly)
        {
            waiter.TrySetResult(early.Reply);
        }

        string reply;
        try
        {
            reply = await waiter.Task.WaitAsync(linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Abandoned: expire it unless a leader took it (then it is not delivered again); a reply that won the race is kept.
            var (state, stored) = await CancelAsync(id).ConfigureAwait(false);
            if (state == "done")
            {
                return Serialization.FromJson<TResponse>(_serializer, stored ?? "null");
            }

            ObjectDisposedException.ThrowIf(_disposed.IsCancellationRequested, this);
            var what = state == "expired"
                ? "before any leader took it: it was marked expired and will not be processed"
                : "after a leader took it, without its reply (it is not delivered again, and its work may be done)";
            if (cancellationToken.IsCancellationRequested)
            {
                throw new OperationCanceledException($"The call {id} to singleton '{name}' was cancelled by its token {what}.", cancellationToken);
            }

            throw new TimeoutException($"The call {id} to singleton '{name}' timed out after {timeout} {what}.");
        }
        finally
        {
            _calls.TryRemove(id, out _);
        }

        return Complete<TResponse>(id, name, reply, await ReadStoredReplyIfNeededAsync(id, reply, cancellationToken).ConfigureAwait(false));
    }

    private TResponse Complete<TResponse>(long id, string name, string reply, string? stored)
    {
        var space = reply.IndexOf(' ', StringComparison.Ordinal);
        var state = space < 0 ? reply : reply[..space];
        return state switch
        {
            "done" => Serialization.FromJson<TResponse>(_serializer, stored ?? (space < 0 ? "null" : reply[(space + 1)..])),
            "dead" => throw new MessagingException(MessagingError.DeadLettered, $"The call {id} to singleton '{name}' was dead-lettered: it was delivered its maximum number of times without an acknowledgement (see docs/messaging.md, Dead letters)."),
            _ => throw new MessagingException(MessagingError.Expired, $"The call {id} to singleton '{name}' expired before a leader took it."),
        };
    }

    private async Task<string?> ReadStoredReplyIfNeededAsync(long id, string reply, CancellationToken cancellationToken)
    {
        if (reply != "done")
        {
            return null; // "done <json>" carries the reply; "dead" / "expired" none.
        }

        await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand($"SELECT reply::text FROM {_schema}.call_results($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [id] });
        return await cmd.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string ?? "null";
    }

    private async Task<(string? State, string? Reply)> CancelAsync(long id)
    {
        await using var connection = await _dataSource.OpenConnectionAsync(CancellationToken.None).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand($"SELECT state, reply::text FROM {_schema}.cancel_call($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = id });
        await using var reader = await cmd.ExecuteReaderAsync(CancellationToken.None).ConfigureAwait(false);
        return await reader.ReadAsync(CancellationToken.None).ConfigureAwait(false)
            ? (reader.GetString(0), reader.IsDBNull(1) ? null : reader.GetString(1))
            : (null, null);
    }

    private string Prepare<T>(string name, T message, TimeSpan? timeToLive)
    {
        ObjectDisposedException.ThrowIf(_disposed.IsCancellationRequested, this);
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException("The singleton's name is required (the name it was registered with, e.g. \"outbox-relay\").", nameof(name));
        }

        if (timeToLive is { } ttl && ttl <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(timeToLive), ttl, "A time-to-live must be positive (or null for none).");
        }

        return Serialization.ToJson(_serializer, message);
    }

    private async Task<long> InsertAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string name, string json, Type type, TimeSpan? timeToLive, string? replyChannel, CancellationToken cancellationToken)
    {
        await using var cmd = new NpgsqlCommand($"SELECT {_schema}.send($1, $2, $3, $4, $5, $6)", connection, transaction);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Namespace });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Jsonb, Value = json });
        cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Interval, Value = timeToLive is { } t ? t : DBNull.Value });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = type.FullName ?? type.Name });
        cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlDbType.Text, Value = (object?)replyChannel ?? DBNull.Value });
        try
        {
            return (long)(await cmd.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }
        catch (PostgresException ex)
        {
            throw Translate(ex, name);
        }
    }

    internal static Exception Translate(PostgresException ex, string name) => ex.SqlState switch
    {
        MessagingSql.UnknownSingletonSqlState => new MessagingException(MessagingError.UnknownSingleton, ex.MessageText + ". " + ex.Hint, ex),
        MessagingSql.QueueFullSqlState => new MessagingException(MessagingError.QueueFull, ex.MessageText + ". " + ex.Hint, ex),
        MessagingSql.PayloadTooLargeSqlState => new MessagingException(MessagingError.PayloadTooLarge, ex.MessageText + ". " + ex.Hint, ex),
        MessagingSql.BadArgumentSqlState => new MessagingException(MessagingError.BadArgument, ex.MessageText, ex),
        MessagingSql.NotPendingSqlState => new MessagingException(MessagingError.NotPending, ex.MessageText + ". " + ex.Hint, ex),
        PostgresErrorCodes.UndefinedFunction or PostgresErrorCodes.InvalidSchemaName or PostgresErrorCodes.UndefinedTable =>
            new MessagingException(MessagingError.NotSetUp, $"Cannot send to singleton '{name}': the messaging tables are missing ({ex.MessageText}). No node with AddHighlanderMessaging (and Fencing on) has started against this database and schema, or the client's Schema differs from the nodes' FencingSchema.", ex),
        _ => ex,
    };

    private Task EnsureListeningAsync(CancellationToken cancellationToken)
    {
        if (_hub is not null)
        {
            return _hub.EnsureListeningAsync(cancellationToken);
        }

        Task listening;
        Task failed;
        lock (_gate)
        {
            _listener ??= Task.Run(ListenAsync);
            listening = _listening.Task;
            failed = _listenFailed.Task;
        }

        return WaitListeningAsync(listening, failed, cancellationToken);
    }

    private static async Task WaitListeningAsync(Task listening, Task failed, CancellationToken cancellationToken)
    {
        if (await Task.WhenAny(listening, failed).WaitAsync(cancellationToken).ConfigureAwait(false) == failed)
        {
            await failed.ConfigureAwait(false); // the connection's error
        }
    }

    // One connection held for the client's life, LISTENing on this client's reply channel. After a broken connection it
    // reconnects and looks up the calls still waiting (their replies may have been sent meanwhile).
    private async Task ListenAsync()
    {
        var token = _disposed.Token;
        var delay = TimeSpan.FromMilliseconds(100);
        while (!token.IsCancellationRequested)
        {
            try
            {
                await using var connection = await _dataSource.OpenConnectionAsync(token).ConfigureAwait(false);
                connection.Notification += (_, e) => Arrived(e.Payload);
                await using (var listen = new NpgsqlCommand($"LISTEN {_replyChannel}", connection))
                {
                    await listen.ExecuteNonQueryAsync(token).ConfigureAwait(false);
                }

                await RecheckAsync(token).ConfigureAwait(false);
                lock (_gate)
                {
                    _listening.TrySetResult();
                    _everListened = true;
                    if (_listenFailed.Task.IsCompleted)
                    {
                        _listenFailed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    }
                }

                delay = TimeSpan.FromMilliseconds(100);
                while (true)
                {
                    await Leasing.ConnectionWait.UntilNotifiedAsync(connection, token).ConfigureAwait(false);
                }
            }
            catch (Exception) when (token.IsCancellationRequested)
            {
                return; // stopping
            }
            catch (Exception ex) when (!token.IsCancellationRequested && ex is NpgsqlException or System.IO.IOException or InvalidOperationException or System.Net.Sockets.SocketException)
            {
                lock (_gate)
                {
                    if (_listening.Task.IsCompleted)
                    {
                        _listening = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    }

                    if (!_everListened)
                    {
                        if (_listenFailed.Task.IsCompleted)
                        {
                            _listenFailed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        }

                        _listenFailed.TrySetException(ex);
                        _ = _listenFailed.Task.Exception; // observed: with no call waiting, nobody else would look at it
                    }
                }

                try
                {
                    await Task.Delay(delay, _time, token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    private async Task RecheckAsync(CancellationToken cancellationToken)
    {
        var ids = _calls.Keys.ToArray();
        if (ids.Length == 0)
        {
            return;
        }

        await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand($"SELECT id, state FROM {_schema}.call_results($1) WHERE state <> 'pending'", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = ids });
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            Arrived(reader.GetInt64(0).ToString(CultureInfo.InvariantCulture) + " " + reader.GetString(1));
        }
    }

    // Payload "<id> <state>[ <reply json>]". A reply may arrive before CallAsync has registered its waiter: kept briefly.
    private void Arrived(string payload)
    {
        var space = payload.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0 || !long.TryParse(payload.AsSpan(0, space), NumberStyles.None, CultureInfo.InvariantCulture, out var id))
        {
            return;
        }

        var rest = payload[(space + 1)..];
        TaskCompletionSource<string>? waiter;
        var now = _time.GetTimestamp();
        lock (_arrivals)
        {
            if (!_calls.TryGetValue(id, out waiter))
            {
                _early[id] = (rest, now);
            }
        }

        if (waiter is not null)
        {
            waiter.TrySetResult(rest);
            return;
        }

        foreach (var (key, value) in _early)
        {
            if (_time.GetElapsedTime(value.At, now) > TimeSpan.FromMinutes(1))
            {
                _early.TryRemove(key, out _);
            }
        }
    }

    private static NpgsqlDataSource BuildDataSource(SingletonClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.ConnectionString))
        {
            throw new ArgumentException($"{nameof(SingletonClientOptions)}.{nameof(SingletonClientOptions.ConnectionString)} is required (or pass an NpgsqlDataSource).", nameof(options));
        }

        return NpgsqlDataSource.Create(Hosting.ConnectionSettings.ForClient(options.ConnectionString, $"{nameof(SingletonClientOptions)}.{nameof(SingletonClientOptions.ConnectionString)}"));
    }

    /// <summary>Abandons waiting calls, closes the reply connection, and disposes the data source if the client built it.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed.IsCancellationRequested)
        {
            return;
        }

        await _disposed.CancelAsync().ConfigureAwait(false);
        if (_listener is { } listener)
        {
            await listener.ConfigureAwait(false);
        }

        if (_ownsDataSource)
        {
            await _dataSource.DisposeAsync().ConfigureAwait(false);
        }

        _disposed.Dispose();
    }
}
