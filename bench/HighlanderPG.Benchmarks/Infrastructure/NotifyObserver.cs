using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Npgsql;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// A bystander session that LISTENs on HighlanderPG's release channel and notes when each release notification
/// arrives: the moment the leader's unlock + NOTIFY committed, give or take one delivery. It takes no lock and sends
/// nothing to the nodes, so it does not change what it observes; it splits a graceful hand-over into the leader's side
/// (stop the child, unlock and notify) and the follower's side (hear it, take the lock, start the child).
/// </summary>
internal sealed class NotifyObserver : IAsyncDisposable
{
    /// <summary>HighlanderPG's channel (an implementation detail: if it changes, this observer sees nothing and says so).</summary>
    public const string Channel = "highlander";

    private readonly NpgsqlConnection _connection;
    private readonly ConcurrentDictionary<long, long> _firstSeen = new();
    private readonly CancellationTokenSource _stopping = new();
    private Task _loop = Task.CompletedTask;

    private NotifyObserver(NpgsqlConnection connection) => _connection = connection;

    public static async Task<NotifyObserver> StartAsync(BenchContext context, CancellationToken cancellationToken)
    {
        var connection = await context.OpenDedicatedAsync("bench-notify-observer", cancellationToken);
        var observer = new NotifyObserver(connection);
        connection.Notification += (_, e) =>
        {
            var at = Stopwatch.GetTimestamp();
            if (long.TryParse(e.Payload, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var key))
            {
                observer._firstSeen.TryAdd(key, at);
            }
        };
        await using (var listen = new NpgsqlCommand($"LISTEN {Channel}", connection))
        {
            await listen.ExecuteNonQueryAsync(cancellationToken);
        }

        observer._loop = observer.LoopAsync();
        return observer;
    }

    /// <summary>When a release of <paramref name="key"/> was first heard, if it was.</summary>
    public long? FirstSeen(long key) => _firstSeen.TryGetValue(key, out var at) ? at : null;

    private async Task LoopAsync()
    {
        try
        {
            while (!_stopping.IsCancellationRequested)
            {
                await _connection.WaitAsync(_stopping.Token);
            }
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        await _loop;
        await _connection.DisposeAsync();
        _stopping.Dispose();
    }
}
