//! A wallet's discount tier from its token balance, now and a day ago.
