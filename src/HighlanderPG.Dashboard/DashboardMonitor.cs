using HighlanderPG.Discovery;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Dashboard;

/// <summary>
/// Reads the cluster every <see cref="HighlanderDashboardOptions.PollInterval"/> from the app's start (not only while
/// someone looks), so that the hand-overs it keeps are those it saw since then. One per mapped dashboard.
/// </summary>
internal sealed partial class DashboardMonitor : IAsyncDisposable
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly string _namespace;
    private readonly string _fencingSchema;
    private readonly IReadOnlyList<string> _names;
    private readonly IClusterSingletons? _local;
    private readonly TimeSpan _interval;
    private readonly int _historySize;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stopping = new();
    private readonly LinkedList<ClusterHandOver> _handOvers = new();
    private readonly object _gate = new();
    private readonly TaskCompletionSource _firstRead = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private ClusterSnapshot? _latest;
    private IReadOnlyList<Operations.HoldOff> _holdOffs = [];
    private string? _error;
    private DateTimeOffset? _watchingSince;
    private Task? _loop;

    public DashboardMonitor(NpgsqlDataSource dataSource, string @namespace, string fencingSchema, IReadOnlyList<string> names, IClusterSingletons? local, TimeSpan interval, int historySize, TimeProvider time, ILogger logger)
    {
        _dataSource = dataSource;
        _namespace = @namespace;
        _fencingSchema = fencingSchema;
        _names = names;
        _local = local;
        _interval = interval;
        _historySize = historySize;
        _time = time;
        _logger = logger;
    }

    public IClusterSingletons? Local => _local;

    /// <summary>The dashboard's data source (the actions' <see cref="Operations.ClusterControl"/> uses it too).</summary>
    public NpgsqlDataSource DataSource => _dataSource;

    public string Namespace => _namespace;

    public string FencingSchema => _fencingSchema;

    public TimeSpan Interval => _interval;

    /// <summary>The hold-offs (drains, step-downs) running at the latest read.</summary>
    public IReadOnlyList<Operations.HoldOff> HoldOffs
    {
        get
        {
            lock (_gate)
            {
                return _holdOffs;
            }
        }
    }

    /// <summary>The latest snapshot, the error of the latest read (if it failed), the hand-overs (newest first), and since when they are watched.</summary>
    public (ClusterSnapshot? Snapshot, string? Error, IReadOnlyList<ClusterHandOver> HandOvers, DateTimeOffset? WatchingSince) Current
    {
        get
        {
            lock (_gate)
            {
                return (_latest, _error, [.. _handOvers], _watchingSince);
            }
        }
    }

    public void Start()
    {
        lock (_gate)
        {
            _loop ??= Task.Run(() => RunAsync(_stopping.Token));
        }
    }

    /// <summary>Waits for the first read (successful or not) after the start.</summary>
    public Task FirstReadAsync(CancellationToken cancellationToken)
    {
        Start();
        return _firstRead.Task.WaitAsync(cancellationToken);
    }

    private async Task RunAsync(CancellationToken stopping)
    {
        ClusterSnapshot? previous = null;
        while (!stopping.IsCancellationRequested)
        {
            try
            {
                // This node's singletons are recognised by name, except those with an explicit key (their name would derive another key).
                var local = _local?.GetAll().Where(s => s.Key == SingletonKey.Derive(_namespace, s.Name)).Select(s => s.Name) ?? [];
                var names = _names.Concat(local).Distinct(StringComparer.Ordinal).ToList();
                await using var connection = await _dataSource.OpenConnectionAsync(stopping).ConfigureAwait(false);
                var snapshot = await ClusterSnapshot.ReadAsync(connection, _namespace, _fencingSchema, names, stopping).ConfigureAwait(false);
                IReadOnlyList<Operations.HoldOff> holdOffs;
                try
                {
                    holdOffs = await Operations.ClusterControl.ReadHoldOffsAsync(connection, _fencingSchema, stopping).ConfigureAwait(false);
                }
                catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege)
                {
                    holdOffs = []; // no USAGE on the schema: the page shows no drains
                }
                lock (_gate)
                {
                    _watchingSince ??= snapshot.TakenAt;
                    if (previous is not null)
                    {
                        foreach (var change in snapshot.HandOversSince(previous))
                        {
                            _handOvers.AddFirst(change);
                            if (_handOvers.Count > _historySize)
                            {
                                _handOvers.RemoveLast();
                            }
                        }
                    }

                    _latest = snapshot;
                    _holdOffs = holdOffs;
                    _error = null;
                }

                previous = snapshot;
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException or IOException or System.Net.Sockets.SocketException or InvalidOperationException)
            {
                // Npgsql's messages name the host, never the password. Logged once per outage, not at every read.
                bool first;
                lock (_gate)
                {
                    first = _error is null;
                    _error = "The database cannot be read: " + ex.Message;
                }

                if (first)
                {
                    LogReadFailed(_logger, ex.Message);
                }
            }
            catch (Exception ex) when (!stopping.IsCancellationRequested)
            {
                // Anything else (a bug, or something the options did not rule out): shown and logged, and the loop goes on,
                // so that no request waits for a first read that never comes.
                bool first;
                lock (_gate)
                {
                    first = _error is null;
                    _error = "The cluster cannot be read: " + ex.Message;
                }

                if (first)
                {
                    LogReadFailed(_logger, ex.ToString());
                }
            }

            _firstRead.TrySetResult();
            try
            {
                await Task.Delay(_interval, _time, stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        Task? loop;
        lock (_gate)
        {
            loop = _loop;
        }

        if (loop is not null)
        {
            await loop.ConfigureAwait(false);
        }

        _stopping.Dispose();
        await _dataSource.DisposeAsync().ConfigureAwait(false);
    }

    [LoggerMessage(EventId = HighlanderPG.Diagnostics.HighlanderEventIds.DashboardReadFailed, Level = LogLevel.Warning, Message = "The HighlanderPG dashboard cannot read the database (it retries at every poll; logged again after a successful read): {Error}")]
    private static partial void LogReadFailed(ILogger logger, string error);
}
