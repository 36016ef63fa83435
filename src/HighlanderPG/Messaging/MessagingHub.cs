using System.Collections.Concurrent;
using System.Text.Json;
using HighlanderPG.Diagnostics;
using HighlanderPG.Supervision;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;

namespace HighlanderPG.Messaging;

/// <summary>
/// A node's messaging: creates the tables, registers the node's singletons (the registry that lets senders tell an
/// unknown name), and keeps the node's one LISTEN connection for messaging, which wakes the inboxes of the
/// singletons this node leads. See docs/messaging.md.
/// </summary>
internal sealed class MessagingHub : IHostedService, IAsyncDisposable
{
    private readonly HighlanderOptions _options;
    private readonly string[] _names;
    private readonly TimeProvider _time;
    private readonly ILogger _log;
    private readonly NpgsqlDataSource? _ownedDataSource;
    private readonly ConcurrentDictionary<string, Wake> _wakes = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly TaskCompletionSource _registered = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _gate = new();
    private Task? _registration;
    private Task? _listener;
    private TaskCompletionSource _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Action<string>? _replyArrived;
    private Func<CancellationToken, Task>? _replyRecheck;

    public MessagingHub(IOptions<HighlanderOptions> options, IOptions<HighlanderMessagingOptions> messaging, IEnumerable<SingletonRegistration> registrations, TimeProvider time, ILoggerFactory loggerFactory)
    {
        _options = options.Value;
        Messaging = messaging.Value;
        _names = registrations.Select(r => r.Name).Distinct(StringComparer.Ordinal).ToArray();
        _time = time;
        _log = loggerFactory.CreateLogger("HighlanderPG");
        if (Messaging.DataSource is { } given)
        {
            DataSource = given;
        }
        else if (!string.IsNullOrWhiteSpace(_options.ConnectionString))
        {
            var builder = new NpgsqlDataSourceBuilder(_options.ConnectionString);
            builder.ConnectionStringBuilder.ApplicationName = "highlander-msg/" + _options.NodeId;
            builder.UseLoggerFactory(new Diagnostics.MinimumLevelLoggerFactory(loggerFactory, LogLevel.Warning)); // as the lock sessions': no line per take and wait
            _options.ConfigureDataSource?.Invoke(builder);
            builder.ConnectionStringBuilder.Multiplexing = false;
            _ownedDataSource = builder.Build();
            DataSource = _ownedDataSource;
        }
        else
        {
            DataSource = null!; // refused at start, with the options' own error
        }
    }

    public HighlanderMessagingOptions Messaging { get; }

    /// <summary>The reply channel of the node's own <see cref="SingletonClient"/>, on the same LISTEN connection as the inboxes' wake-ups.</summary>
    public string ReplyChannel { get; } = SingletonClient.NewReplyChannel();

    public void AttachReplies(Action<string> arrived, Func<CancellationToken, Task> recheck)
    {
        _replyArrived = arrived;
        _replyRecheck = recheck;
    }

    public NpgsqlDataSource DataSource { get; }

    public string Schema => _options.FencingSchema;

    public string Namespace => _options.Namespace;

    public TimeProvider Time => _time;

    public ILogger Log => _log;

    /// <summary>Completes when the tables exist and this node's singletons are registered.</summary>
    public Task Registered => _registered.Task;

    public static string FencingRequired(string what) =>
        $"{what} needs fencing: set HighlanderOptions.Fencing = true on every node (messages are acknowledged under the singleton's fencing epoch, so that a stale leader cannot acknowledge).";

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (!_options.Fencing)
        {
            throw new InvalidOperationException(FencingRequired("AddHighlanderMessaging"));
        }

        if (Messaging.Validate() is { } problem)
        {
            throw new InvalidOperationException(problem);
        }

        if (DataSource is null)
        {
            return; // HighlanderOptions' own validation reports the missing connection string
        }

        // One attempt now, so that a node that starts is known to senders; retried in the background if the database is away.
        if (!await TryRegisterAsync(cancellationToken).ConfigureAwait(false))
        {
            _registration = Task.Run(RegisterLoopAsync, CancellationToken.None);
        }
    }

    private async Task RegisterLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_options.ReconnectMaxDelay, _time, _stopping.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (await TryRegisterAsync(_stopping.Token).ConfigureAwait(false))
            {
                return;
            }
        }
    }

    private async Task<bool> TryRegisterAsync(CancellationToken cancellationToken)
    {
        try
        {
            await using var connection = await DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await MessagingSql.EnsureCreatedAsync(connection, Schema, cancellationToken).ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand(MessagingSql.Register(Schema), connection);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Namespace });
            cmd.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = _names });
            cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Messaging.MaxPending });
            cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Messaging.MaxDeliveries });
            cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Messaging.MaxPayloadBytes });
            cmd.Parameters.Add(new NpgsqlParameter { NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Interval, Value = Messaging.DefaultTimeToLive is { } ttl ? ttl : DBNull.Value });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = _options.NodeId });
            await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            Diagnostics.Log.MessagingRegistered(_log, _names.Length, Schema);
            _registered.TrySetResult();
            return true;
        }
        catch (Exception ex) when (ex is NpgsqlException or System.IO.IOException or TimeoutException or System.Net.Sockets.SocketException)
        {
            Diagnostics.Log.MessagingSetupFailed(_log, ex, Schema, _options.ReconnectMaxDelay);
            return false;
        }
    }

    /// <summary>The wake-up signal of one of this node's singletons (set by a notification of a send to it).</summary>
    public Wake WakeFor(string name) => _wakes.GetOrAdd(name, static _ => new Wake());

    /// <summary>Starts the node's LISTEN connection (once); completes when it listens, or at once if it cannot (then inboxes poll).</summary>
    public Task EnsureListeningAsync(CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            _listener ??= Task.Run(ListenAsync, CancellationToken.None);
            return _listening.Task.WaitAsync(cancellationToken);
        }
    }

    private async Task ListenAsync()
    {
        var token = _stopping.Token;
        var delay = _options.ReconnectMinDelay;
        while (!token.IsCancellationRequested)
        {
            try
            {
                await using var connection = await DataSource.OpenConnectionAsync(token).ConfigureAwait(false);
                connection.Notification += (_, e) =>
                {
                    if (e.Channel == ReplyChannel)
                    {
                        _replyArrived?.Invoke(e.Payload);
                    }
                    else
                    {
                        Arrived(e.Payload);
                    }
                };
                await using (var listen = new NpgsqlCommand($"LISTEN {MessagingSql.Channel(Schema)}; LISTEN {ReplyChannel}", connection))
                {
                    await listen.ExecuteNonQueryAsync(token).ConfigureAwait(false);
                }

                if (_replyRecheck is { } recheck)
                {
                    await recheck(token).ConfigureAwait(false);
                }

                lock (_gate)
                {
                    _listening.TrySetResult();
                }

                // Anything sent while not listening: every inbox looks again.
                foreach (var wake in _wakes.Values)
                {
                    wake.Signal();
                }

                delay = _options.ReconnectMinDelay;
                while (true)
                {
                    await Leasing.ConnectionWait.UntilNotifiedAsync(connection, token).ConfigureAwait(false);
                }
            }
            catch (Exception) when (token.IsCancellationRequested)
            {
                return; // stopping
            }
            catch (Exception ex) when (!token.IsCancellationRequested && ex is NpgsqlException or System.IO.IOException or InvalidOperationException or System.Net.Sockets.SocketException or TimeoutException)
            {
                Diagnostics.Log.MessagingListenerFailed(_log, ex, delay);
                lock (_gate)
                {
                    // Inboxes go on by polling meanwhile: let the first waiters through.
                    _listening.TrySetResult();
                    _listening = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    _listening.TrySetResult();
                }

                try
                {
                    await Task.Delay(delay, _time, token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.ReconnectMaxDelay.Ticks));
            }
        }
    }

    private void Arrived(string payload)
    {
        try
        {
            using var doc = JsonDocument.Parse(payload);
            if (doc.RootElement.ValueKind == JsonValueKind.Array && doc.RootElement.GetArrayLength() == 2
                && doc.RootElement[0].GetString() == Namespace && doc.RootElement[1].GetString() is { } name
                && _wakes.TryGetValue(name, out var wake))
            {
                wake.Signal();
            }
        }
        catch (JsonException)
        {
            // not ours
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var task in new[] { _listener, _registration })
        {
            if (task is not null)
            {
                await task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stopping.IsCancellationRequested)
        {
            await _stopping.CancelAsync().ConfigureAwait(false);
        }

        if (_ownedDataSource is not null)
        {
            await _ownedDataSource.DisposeAsync().ConfigureAwait(false);
        }
    }
}

/// <summary>A level-triggered wake-up: take <see cref="Current"/> before looking, await it after finding nothing.</summary>
internal sealed class Wake
{
    private TaskCompletionSource _current = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Current => Volatile.Read(ref _current).Task;

    public void Signal() => Interlocked.Exchange(ref _current, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
}
