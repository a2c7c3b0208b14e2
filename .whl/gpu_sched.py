import numpy as np, tensorcomp as tc, pycuda.gpuarray as ga, pycuda.driver as drv
from tensorcomp.runtime import cuda as rc
from tensorcomp.schedule import Reorder, Split, Block, Layout
rc.init()
src = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
rng = np.random.default_rng(0)
I = rng.standard_normal((32,14,14,32,4,4)).astype(np.float32); W = rng.standard_normal((3,3,32,32,4,4)).astype(np.float32)
gI, gW = ga.to_gpu(I), ga.to_gpu(W)
ref = tc.op(src)(I, W)
F = 2*32*36*32*16*9*32*4
R = ("ky","kx","ci","q")
S = {
 "p,r fast co b128": (Reorder(0, ("n","y","x","co")+R+("p","r")), Block(128)),
 "p,r fast co b256": (Reorder(0, ("n","y","x","co")+R+("p","r")), Block(256)),
 "p,r fast co b64": (Reorder(0, ("n","y","x","co")+R+("p","r")), Block(64)),
 "p,r fast x": (Reorder(0, ("n","y","co","x")+R+("p","r")), Block(128)),
 "co2,p,r fast co_o": (Split(0,"co",2), Reorder(0, ("n","y","x","co_o")+R+("co_i","p","r")), Block(128)),
 "co4,p,r fast co_o": (Split(0,"co",4), Reorder(0, ("n","y","x","co_o")+R+("co_i","p","r")), Block(128)),
 "x2,p,r fast co": (Split(0,"x",2), Reorder(0, ("n","y","x_o","co")+R+("x_i","p","r")), Block(128)),
 "n2,p,r fast co": (Split(0,"n",2), Reorder(0, ("n_o","y","x","co")+R+("n_i","p","r")), Block(128)),
 "n4,co2 (run C best)": (Split(0,"n",4), Split(0,"co",2), Reorder(0, ("n_o","y","x","co_o","p","r")+R+("n_i","co_i")), Block(128)),
 "p,r ci-inner": (Reorder(0, ("n","y","x","co","ky","kx","q","ci","p","r")), Block(128)),
}
s, e = drv.Event(), drv.Event()
for name, sch in S.items():
    op = tc.op(src, schedule=sch)
    out = op(gI, gW)
    err = np.abs(rc.to_host(out) - ref).max() / np.abs(ref).max()
    for _ in range(3): op(gI, gW)
    best = 1e9
    for _ in range(5):
        s.record()
        for _ in range(50): op(gI, gW)
        e.record(); e.synchronize(); best = min(best, s.time_till(e) / 50)
    print(f"{name:24s} {best*1e3:7.1f} us {F/best/1e9:6.2f} TFLOP/s err {err:.1e}", flush=True)
