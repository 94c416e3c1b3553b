r"""Peer emulators from the seed papers, behind the same :class:`~jaxspec.emulator.Emulator`
interface as the line and pixel emulators (so :func:`jaxspec.infer.fit_map`,
:func:`~jaxspec.infer.sample_nuts`, :func:`~jaxspec.infer.bayes_opt`,
:func:`~jaxspec.infer.observe` and ``jaxspec infer`` take any of them):

* :class:`CannonEmulator` (:func:`train_cannon`): The Cannon (Ness et al. 2015), a
  quadratic model of each pixel in the labels with a per-pixel intrinsic scatter that
  enters the likelihood (:attr:`~jaxspec.emulator.Emulator.model_variance`);
* :class:`PayneEmulator` (:func:`train_payne`): The Payne (Ting et al. 2019), one
  multilayer perceptron labels → spectrum;
* :class:`AutoencoderEmulator` (:func:`train_autoencoder`): Gebran et al.'s generator, an
  autoencoder's decoder stacked on a dense labels → latent network.

Each trains from a :class:`~jaxspec.grid.SpectralGrid` (optionally holding nodes out),
saves to and loads from HDF5 (:func:`jaxspec.emulator.load_emulator` reads any kind), and
is jit-, vmap- and grad-safe with respect to the parameters. ``jaxspec train KIND grid.h5
--out model.h5`` trains from the command line.
"""

from jaxspec.peers.autoencoder import AutoencoderEmulator, train_autoencoder
from jaxspec.peers.cannon import CannonEmulator, train_cannon
from jaxspec.peers.payne import PayneEmulator, train_payne

__all__ = [
    "AutoencoderEmulator",
    "CannonEmulator",
    "PayneEmulator",
    "train_autoencoder",
    "train_cannon",
    "train_payne",
]
