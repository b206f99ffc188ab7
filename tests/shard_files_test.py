"""embag shard-split and shard-join: a table split into per-rank .embag files (even and uneven,
a rank with no rows) joins back to the same rows, and a bad split writes no file. Run by meson
with the tool's path in EMBAG_TOOL; needs no NumPy (the .npy is written by hand)."""
import os
import random
import struct
import subprocess
import sys
import tempfile

tool = os.environ['EMBAG_TOOL']


def write_npy(path, rows, dim, values):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    header += ' ' * (64 - (10 + len(header) + 1) % 64) + '\n'
    with open(path, 'wb') as f:
        f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode() + struct.pack('<%df' % len(values), *values))


def npy_data(path):
    blob = open(path, 'rb').read()
    return blob[10 + struct.unpack('<H', blob[8:10])[0]:]


def embag(*args, ok=True):
    run = subprocess.run([tool, *args], capture_output=True, text=True)
    if (run.returncode == 0) != ok:
        sys.exit(f'embag {" ".join(args)}: exit {run.returncode}: {run.stderr}')
    return run


with tempfile.TemporaryDirectory() as d:
    rows, dim = 11, 7
    values = [random.Random(5).gauss(0, 1) for _ in range(rows * dim)]
    write_npy(f'{d}/W.npy', rows, dim, values)
    for split in (['--ranks', '4'], ['--counts', '3,0,8']):
        ranks = 4 if split[0] == '--ranks' else 3
        embag('shard-split', '--in', f'{d}/W.npy', *split, '--out', f'{d}/W.{{rank}}.embag')
        embag('shard-join', '--in', f'{d}/W.{{rank}}.embag', '--ranks', str(ranks), '--out', f'{d}/J.embag')
        embag('dequantize', '--in', f'{d}/J.embag', '--out', f'{d}/J.npy')
        assert npy_data(f'{d}/J.npy') == npy_data(f'{d}/W.npy'), split
    # an int8 table splits in its own dtype, and joins back to the same bytes
    embag('quantize', '--in', f'{d}/W.npy', '--to', 'int8_rowwise', '--out', f'{d}/Q.embag')
    embag('shard-split', '--in', f'{d}/Q.embag', '--ranks', '2', '--out', f'{d}/Q.{{rank}}.embag')
    embag('shard-join', '--in', f'{d}/Q.{{rank}}.embag', '--ranks', '2', '--out', f'{d}/R.embag')
    assert open(f'{d}/Q.embag', 'rb').read() == open(f'{d}/R.embag', 'rb').read()
    # counts that do not add up to the table's rows: an error, and no file written
    before = sorted(os.listdir(d))
    run = embag('shard-split', '--in', f'{d}/W.npy', '--counts', '3,3', '--out', f'{d}/X.{{rank}}.embag', ok=False)
    assert 'add up to 6 rows' in run.stderr, run.stderr
    assert sorted(os.listdir(d)) == before
print('ok')
